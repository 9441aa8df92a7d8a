"""Batching of ``/segment``: a lone request is decoded at once, a busy queue gets a short window.

LitServe's batched loop gathers requests until ``max_batch_size`` or until ``batch_timeout`` has
passed since it began looking, so a lone request always waits the whole window (``evf serve``'s old
10 ms default doubled the answer time of a tiny model at concurrency 1). With ``batch_timeout=0`` it
takes only what is already queued, but when nothing is it asks again at once: an idle worker spins
a core. `QueuedBatchLoop` instead

1. sleeps in a blocking ``get`` until a request arrives (no spinning),
2. adds whatever else is already queued, up to ``max_batch_size``,
3. and only when that found company (other clients are sending: there is load), waits up to
   ``window`` seconds for the batch to fill.

At concurrency 1 a request therefore never waits; under load a batch is what arrived during the
previous decode plus the window (benchmarks/serve.md measures both halves). The requests are then
handed to LitServe's own ``collate_requests`` (its start message, its queue timeout, the stop
sentinel) as if they had been queued all along.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

from litserve.loops.base import collate_requests
from litserve.loops.simple_loops import BatchedLoop

IDLE_WAIT_S = 0.1
"""Longest single blocking wait of an idle worker (a request wakes it at once)."""


class _Prepended:
    """A queue whose ``get_nowait`` returns ``items`` first, then reads ``queue``."""

    def __init__(self, items: list[Any], queue: Any) -> None:
        self._items = list(reversed(items))
        self._queue = queue

    def get_nowait(self) -> Any:
        return self._items.pop() if self._items else self._queue.get_nowait()


class QueuedBatchLoop(BatchedLoop):
    """Batches without delaying a lone request (see the module doc).

    Args:
        window: seconds a batch that already holds two or more requests may wait to fill.
    """

    def __init__(self, window: float = 0.005) -> None:
        super().__init__()
        if window < 0:
            raise ValueError(f"window must be >= 0 seconds, got {window}")
        self.window = window

    def get_batch_requests(self, lit_api: Any, request_queue: Any, transport: Any) -> tuple[list, list]:
        if lit_api.batch_timeout != 0:
            raise ValueError("QueuedBatchLoop keeps its own window: the API's batch_timeout must be 0")
        items = [self._first(request_queue)]
        deadline = None
        while len(items) < lit_api.max_batch_size:
            try:
                items.append(request_queue.get_nowait())
                continue
            except Empty:
                pass
            if len(items) == 1 or self.window == 0:
                break  # alone: decode now
            deadline = deadline or time.monotonic() + self.window
            if (remaining := deadline - time.monotonic()) <= 0:
                break
            try:
                items.append(request_queue.get(timeout=remaining))
            except Empty:
                break
        return collate_requests(self, lit_api, _Prepended(items, request_queue), transport)

    @staticmethod
    def _first(request_queue: Any) -> Any:
        """The next request (or LitServe's stop sentinel), sleeping until there is one."""
        while True:
            try:
                return request_queue.get(timeout=IDLE_WAIT_S)
            except Empty:
                continue


__all__ = ["QueuedBatchLoop"]
