"""Results of work submitted ahead, taken in submission order (Ray tasks and local processes alike)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

R = TypeVar("R")


def in_order(
    submit: Callable[[Any], Any],
    items: Iterable[Any],
    ahead: int,
    get: Callable[[Any], R],
    cancel: Callable[[Any], Any],
) -> Generator[R, None, None]:
    """Results of submitted items in order, `ahead` submitted before the first is awaited; those
    submitted but not yet taken are cancelled when the caller stops early (a bad row found)."""
    waiting: deque[Any] = deque()
    try:
        for item in items:
            waiting.append(submit(item))
            if len(waiting) >= ahead:
                yield get(waiting.popleft())
        while waiting:
            yield get(waiting.popleft())
    finally:
        for handle in waiting:
            cancel(handle)
