"""Repeatable CPU training for the pretraining tools: the same command writes the same weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def deterministic_cpu(threads: int | None = None) -> Iterator[None]:
    """Deterministic torch algorithms (multi-threaded CPU backward is otherwise not bitwise
    repeatable) for the duration, and ``threads`` CPU threads when given; restored afterwards."""
    if threads:
        torch.set_num_threads(threads)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


__all__ = ["deterministic_cpu"]
