"""`QueuedBatchLoop`: a lone request is taken at once, a queue is taken whole up to the batch size and
then waits its window only when it found company, the worker sleeps (no spinning) while nothing is
queued, and LitServe's stop sentinel still stops it."""

import queue
import threading
import time

import litserve as ls
import pytest
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError

from evf.serve.batching import QueuedBatchLoop


class _Echo(ls.LitAPI):
    def setup(self, device: str) -> None:
        pass

    def predict(self, x):
        return x


def _api(batch_timeout: float = 0.0) -> ls.LitAPI:
    api = _Echo(max_batch_size=3, batch_timeout=batch_timeout)
    api.request_timeout = 30  # what LitServer sets
    return api


class _Transport:
    def send(self, item, consumer_id) -> None:
        pass


def _request(uid: str) -> tuple:
    return (0, uid, time.monotonic(), f"payload {uid}")


def _uids(payloads) -> list[str]:
    return [p[1] for p in payloads]


def test_a_queue_is_taken_whole_up_to_the_batch_size_in_arrival_order():
    requests: queue.Queue = queue.Queue()
    for uid in "abcd":
        requests.put(_request(uid))
    loop = QueuedBatchLoop(window=0.0)
    payloads, timed_out = loop.get_batch_requests(_api(), requests, _Transport())
    assert _uids(payloads) == ["a", "b", "c"] and payloads[0][2] == "payload a" and not timed_out
    payloads, _ = loop.get_batch_requests(_api(), requests, _Transport())
    assert _uids(payloads) == ["d"]


def test_a_lone_request_never_waits_the_window_but_a_busy_batch_does():
    loop = QueuedBatchLoop(window=0.5)
    requests: queue.Queue = queue.Queue()
    requests.put(_request("alone"))
    began = time.monotonic()
    payloads, _ = loop.get_batch_requests(_api(), requests, _Transport())
    assert _uids(payloads) == ["alone"] and time.monotonic() - began < 0.2
    requests.put(_request("a"))
    requests.put(_request("b"))
    threading.Timer(0.2, requests.put, args=(_request("c"),)).start()  # arrives within the window
    payloads, _ = loop.get_batch_requests(_api(), requests, _Transport())
    assert _uids(payloads) == ["a", "b", "c"]


def test_an_idle_worker_sleeps_until_a_request_arrives():
    requests: queue.Queue = queue.Queue()
    threading.Timer(0.3, requests.put, args=(_request("late"),)).start()
    began_cpu, began = time.process_time(), time.monotonic()
    payloads, _ = QueuedBatchLoop().get_batch_requests(_api(), requests, _Transport())
    waited, cpu = time.monotonic() - began, time.process_time() - began_cpu
    assert _uids(payloads) == ["late"] and waited >= 0.25
    assert cpu < 0.1, f"the wait used {cpu:.2f} s of CPU in {waited:.2f} s: spinning"


def test_the_stop_sentinel_stops_the_loop_and_litserves_own_window_is_refused():
    requests: queue.Queue = queue.Queue()
    requests.put(_SENTINEL_VALUE)
    with pytest.raises(_StopLoopError):
        QueuedBatchLoop().get_batch_requests(_api(), requests, _Transport())
    with pytest.raises(ValueError, match="batch_timeout must be 0"):
        QueuedBatchLoop().get_batch_requests(_api(batch_timeout=0.01), requests, _Transport())
    with pytest.raises(ValueError, match="window"):
        QueuedBatchLoop(window=-1)
