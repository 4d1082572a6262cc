"""A dependency-free progress bar for long CLI work (stderr, redrawn in place on a terminal)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress"]

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, label: str = "", enabled: bool = True) -> Iterator[T]:
    """Yield `items`, drawing `label [#####     ] k/n  12.3s` on stderr as they go."""
    if total is None:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    if not enabled:
        yield from items
        return
    tty = sys.stderr.isatty()
    start, last, step = time.monotonic(), -1.0, max(1, (total or 100) // 20)
    done = 0
    for done, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if tty and now - last >= 0.1 or (not tty and done % step == 0):
            _draw(label, done, total, now - start, tty)
            last = now
    _draw(label, done, total, time.monotonic() - start, tty)
    sys.stderr.write("\n" if tty else "")
    sys.stderr.flush()


def _draw(label: str, done: int, total: int | None, elapsed: float, tty: bool) -> None:
    if total:
        filled = int(30 * done / total)
        bar = f"[{'#' * filled}{' ' * (30 - filled)}] {done}/{total}"
    else:
        bar = f"{done}"
    sys.stderr.write(("\r" if tty else "") + f"{label} {bar} {elapsed:6.1f}s" + ("" if tty else "\n"))
    sys.stderr.flush()
