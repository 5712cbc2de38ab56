"""One way to run stateless CPU tasks beside the pool: a function over a sequence of items, results
yielded in the items' order, a bounded number in flight (so the caller's memory does not grow with
the number of items). On a Ray cluster they are Ray tasks; without one, processes of this machine.

    tasks = make_tasks(local=True, items=len(pieces))
    for result in tasks.map(scan_piece, pieces):  # in order; stops submitting when the caller stops
        ...
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Protocol, TypeVar

from dit_worker.execution.ordered import in_order

T = TypeVar("T")
R = TypeVar("R")


class Tasks(Protocol):
    """Runs `fn` over items elsewhere; `map` yields the results in the items' order. `close()`
    when done (processes are kept between maps)."""

    workers: int

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Generator[R, None, None]: ...

    def close(self) -> None: ...


class InlineTasks:
    """In this process, one item at a time (one item, or a machine with one core)."""

    workers = 1

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Generator[R, None, None]:
        for item in items:
            yield fn(item)

    def close(self) -> None:
        pass


class ProcessTasks:
    """Processes of this machine, started fresh (spawn: the caller may hold threads a fork would
    copy mid-lock), `workers` at a time, at most twice that many results waiting; started on the
    first map and kept for the next until `close()`."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Generator[R, None, None]:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        pool = self._pool
        yield from in_order(lambda item: pool.submit(fn, item), items, 2 * self.workers, Future.result, Future.cancel)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def make_tasks(
    *, local: bool, items: int, here: bool = True, address: str | None = None, workers: int | None = None
) -> Tasks:
    """The tasks for `items` items: inline for one; on Ray unless `local`, pinned to this node when
    `here` (what the tasks read exists on this node only); else processes of this machine (`workers`
    of them at most, default one per core; 1: inline)."""
    if items <= 1:
        return InlineTasks()
    if local:
        workers = min(workers or os.cpu_count() or 1, items)
        return InlineTasks() if workers == 1 else ProcessTasks(workers)
    from dit_worker.execution.ray_tasks import RayTasks  # Ray only when asked for (as the pool's actors)

    return RayTasks(here=here, address=address)
