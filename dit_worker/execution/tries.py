"""Keyed tasks with counted tries: a failed task goes back to the front until it has used its tries."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class TaskFailed(RuntimeError):
    """A task that failed `max_tries` times; the message names it and its last error."""


class TaskQueue(Generic[T]):
    """Tasks as `(key, task)` pairs, taken lazily from `tasks` (a generator may build them on demand,
    so tasks that carry data are only made when a worker has room for them).

    `name(key)` names a task in messages ("shard 00003").
    """

    def __init__(self, tasks: Iterable[tuple[int, T]], max_tries: int, name: Callable[[int], str] = str) -> None:
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self._fresh: Iterator[tuple[int, T]] = iter(tasks)
        self._next: tuple[int, T] | None = None
        self._retry: deque[tuple[int, T]] = deque()
        self._tries: dict[int, int] = {}
        self.max_tries, self.name = max_tries, name
        self.retries = 0

    def __bool__(self) -> bool:
        if self._retry or self._next is not None:
            return True
        self._next = next(self._fresh, None)
        return self._next is not None

    def take(self) -> tuple[int, T]:
        if self._retry:
            return self._retry.popleft()
        if not self:
            raise IndexError("take() from an empty TaskQueue")
        assert self._next is not None
        item, self._next = self._next, None
        return item

    def failed(self, key: int, task: T, error: str) -> None:
        """Requeue the task first in line, or raise TaskFailed naming it when out of tries."""
        tries = self._tries[key] = self._tries.get(key, 0) + 1
        if tries >= self.max_tries:
            raise TaskFailed(f"{self.name(key)} failed {tries} time(s), giving up; last error: {error}")
        self.retries += 1
        self._retry.appendleft((key, task))
