"""Batching of ``/segment`` without a window to wait out.

LitServe's batched loop gathers requests until ``max_batch_size`` or until ``batch_timeout`` has
passed since it began looking, so a lone request waits the whole window (``evf serve``'s old 10 ms
default doubled the answer time of a tiny model at concurrency 1). With ``batch_timeout=0`` LitServe
takes only what is already queued, but when nothing is it asks again at once: an idle worker spins
a core. `QueuedBatchLoop` sleeps in a blocking ``get`` until a request arrives, then adds whatever
else is queued, up to ``max_batch_size``: a lone request is decoded at once, and under load a batch
is what arrived while the previous one was being decoded. Each request is then handled by
LitServe's own ``collate_requests`` (its start message, its queue timeout, the stop sentinel).
"""

from __future__ import annotations

from queue import Empty
from typing import Any

from litserve.loops.base import collate_requests
from litserve.loops.simple_loops import BatchedLoop


IDLE_WAIT_S = 0.1
"""Longest single blocking wait of an idle worker (a request wakes it at once)."""


class _Prepended:
    """A queue whose first ``get_nowait`` returns ``first``, then reads ``queue``."""

    def __init__(self, first: Any, queue: Any) -> None:
        self._first: list[Any] = [first]
        self._queue = queue

    def get_nowait(self) -> Any:
        return self._first.pop() if self._first else self._queue.get_nowait()


class QueuedBatchLoop(BatchedLoop):
    """A batch is the requests queued when the worker is free (``batch_timeout`` must be 0)."""

    def get_batch_requests(self, lit_api: Any, request_queue: Any, transport: Any) -> tuple[list, list]:
        if lit_api.batch_timeout != 0:
            raise ValueError("QueuedBatchLoop batches what is queued: the API's batch_timeout must be 0")
        while True:  # sleep in short blocking gets until a request (or LitServe's stop sentinel) arrives
            try:
                first = request_queue.get(timeout=IDLE_WAIT_S)
            except Empty:
                continue
            return collate_requests(self, lit_api, _Prepended(first, request_queue), transport)


__all__ = ["QueuedBatchLoop"]
