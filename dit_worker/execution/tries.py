"""Keyed tasks with counted tries: a failed task comes back, after a backoff, until it has used its tries."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class TaskFailed(RuntimeError):
    """A task that failed `max_tries` times (or could never succeed); the message names it and its last error."""


class PermanentError(Exception):
    """Raised by a task for a failure that a retry cannot fix (the same inputs give the same error):
    the task fails at once instead of using up its tries and backoff."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter ("equal jitter", Brooker 2015, "Exponential Backoff And Jitter"):
    after the n-th failure a task waits d/2 + U(0, d/2) with d = min(max_s, base_s * 2**(n - 1)).

    Jitter spreads the retries of many shards that failed together (a storage outage), so they do not
    all come back at the same moment.
    """

    base_s: float = 15.0
    max_s: float = 240.0

    def delay(self, failures: int, rng: random.Random) -> float:
        d = min(self.max_s, self.base_s * 2 ** (failures - 1))
        return d / 2 + rng.uniform(0, d / 2)


class TaskQueue(Generic[T]):
    """Tasks as `(key, task)` pairs, taken lazily from `tasks` (a generator may build them on demand,
    so tasks that carry data are only made when a worker has room for them).

    `name(key)` names a task in messages ("shard 00003"). A failed task is retried before fresh ones,
    once its backoff has passed.
    """

    def __init__(
        self,
        tasks: Iterable[tuple[int, T]],
        max_tries: int,
        name: Callable[[int], str] = str,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self._fresh: Iterator[tuple[int, T]] = iter(tasks)
        self._next: tuple[int, T] | None = None
        self._retry: list[tuple[float, int, T]] = []  # (not before, key, task), earliest first
        self._tries: dict[int, int] = {}
        self.max_tries, self.name, self.backoff, self.clock = max_tries, name, backoff or Backoff(0, 0), clock
        self.retries = 0
        self._rng = random.Random()

    def __bool__(self) -> bool:
        """Whether any task is left, ready now or waiting out its backoff."""
        return bool(self._retry) or self._peek()

    def _peek(self) -> bool:
        if self._next is None:
            self._next = next(self._fresh, None)
        return self._next is not None

    def ready(self) -> bool:
        """Whether `take()` has a task now."""
        return (bool(self._retry) and self._retry[0][0] <= self.clock()) or self._peek()

    def wait_s(self) -> float:
        """Seconds until a task is ready (0 when one is; inf when none is left)."""
        if self.ready():
            return 0.0
        return max(0.0, self._retry[0][0] - self.clock()) if self._retry else float("inf")

    def take(self) -> tuple[int, T]:
        if self._retry and self._retry[0][0] <= self.clock():
            _, key, task = self._retry.pop(0)
            return key, task
        if not self._peek():
            raise IndexError("take() with no task ready")
        assert self._next is not None
        item, self._next = self._next, None
        return item

    def failed(self, key: int, task: T, error: str, *, final: bool = False) -> None:
        """Requeue the task after its backoff, or raise TaskFailed naming it when out of tries
        (at once when `final`: an error that a retry cannot fix)."""
        tries = self._tries[key] = self._tries.get(key, 0) + 1
        if final:
            raise TaskFailed(f"{self.name(key)} failed, not retried: {error}")
        if tries >= self.max_tries:
            raise TaskFailed(f"{self.name(key)} failed {tries} time(s), giving up; last error: {error}")
        self.retries += 1
        not_before = self.clock() + self.backoff.delay(tries, self._rng)
        self._retry.append((not_before, key, task))
        self._retry.sort(key=lambda r: r[0])
