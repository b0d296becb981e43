"""Counts from long loops (distillation epochs, accuracy-aware rebuilds, ...) without passing a
callback through every signature: the loop calls `report(done, total, detail)`, and whoever runs
the loop (the pipeline's stage runner) decides where counts go with `reporting(callback)`.
Outside `reporting`, `report` does nothing: the library prints nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Callback = Callable[[int, int, str], None]

_current: ContextVar[Callback | None] = ContextVar("edgeport_progress", default=None)


@contextmanager
def reporting(callback: Callback) -> Iterator[None]:
    token = _current.set(callback)
    try:
        yield
    finally:
        _current.reset(token)


def report(done: int, total: int, detail: str = "") -> None:
    """`done` of `total` steps finished (report 0 before the first step: the time left is
    estimated from the pace since then)."""
    callback = _current.get()
    if callback is not None:
        callback(done, total, detail)
