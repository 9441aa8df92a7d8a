"""`QueuedBatchLoop`: a lone request is taken at once, a queue is taken whole up to the batch size, the
worker sleeps (no spinning) while nothing is queued, and LitServe's stop sentinel still stops it."""

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


def _API(batch_timeout: float = 0.0) -> ls.LitAPI:
    api = _Echo(max_batch_size=3, batch_timeout=batch_timeout)
    api.request_timeout = 30  # what LitServer sets
    return api


class _Transport:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, item, consumer_id) -> None:
        self.sent.append((item, consumer_id))


def _request(uid: str) -> tuple:
    return (0, uid, time.monotonic(), f"payload {uid}")


def test_a_queue_is_taken_whole_up_to_the_batch_size_in_arrival_order():
    requests: queue.Queue = queue.Queue()
    for uid in "abcd":
        requests.put(_request(uid))
    loop = QueuedBatchLoop()
    payloads, timed_out = loop.get_batch_requests(_API(), requests, _Transport())
    assert [p[1] for p in payloads] == ["a", "b", "c"] and [p[2] for p in payloads][0] == "payload a"
    assert not timed_out
    payloads, _ = loop.get_batch_requests(_API(), requests, _Transport())
    assert [p[1] for p in payloads] == ["d"]  # the rest, without waiting for a full batch


def test_an_idle_worker_sleeps_until_a_request_arrives_then_takes_it_alone():
    requests: queue.Queue = queue.Queue()
    threading.Timer(0.3, requests.put, args=(_request("late"),)).start()
    began_cpu, began = time.process_time(), time.monotonic()
    payloads, _ = QueuedBatchLoop().get_batch_requests(_API(), requests, _Transport())
    waited, cpu = time.monotonic() - began, time.process_time() - began_cpu
    assert [p[1] for p in payloads] == ["late"] and waited >= 0.25
    assert cpu < 0.1, f"the wait used {cpu:.2f} s of CPU in {waited:.2f} s: spinning"


def test_the_stop_sentinel_stops_the_loop_and_a_window_is_refused():
    requests: queue.Queue = queue.Queue()
    requests.put(_SENTINEL_VALUE)
    with pytest.raises(_StopLoopError):
        QueuedBatchLoop().get_batch_requests(_API(), requests, _Transport())
    with pytest.raises(ValueError, match="batch_timeout must be 0"):
        QueuedBatchLoop().get_batch_requests(_API(batch_timeout=0.01), requests, _Transport())
