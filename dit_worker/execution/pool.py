"""The one pool: actors of one class, kept fed with keyed tasks until each task has a result.

The dispatch loop is written once; where the actors run is the transport's business
(`ray_actors.RayActors` on a cluster, `local_actors.LocalActors` in this process), chosen once by
`make_pool`. A dead actor is restarted by its transport; the task it held is rerun by this loop,
never by the transport, so every try is counted by the TaskQueue and the last failure names the task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterator
from typing import Any, Generic, TypeVar

from dit_worker.execution.actors import ActorLost, Actors, TaskError
from dit_worker.execution.local_actors import LocalActors
from dit_worker.execution.members import Assignment, Members
from dit_worker.execution.stats import PoolStats
from dit_worker.execution.tries import TaskFailed, TaskQueue

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

WAIT_S = 5.0  # how often the loop wakes without news
GROW_S = 5.0  # how often the transport is asked for room for more actors
START_TRIES = 3  # an actor whose start fails is replaced this many times before its slot is given up
START_RETRY_S = 2.0
STALL_LOG_S = 60.0


class ActorPool(Generic[T, R]):
    """Tasks given as a TaskQueue, run on `actors` (at most `tasks_per_actor` in flight on each).

    The actor class answers `ready()` once built (a string describing it, for the log) and
    `run(task)` for each task. Usage::

        pool = make_pool(ShardWorker, (spec,), local=False, per_actor={"CPU": 1, "GPU": 1}, num_workers=None)
        pool.start()  # PlacementError now, before anything is written, if the actors cannot be placed
        for key, result in pool.map(TaskQueue(tasks, max_tries=3, name=lambda k: f"shard {k:05d}")):
            ...
        pool.close()
    """

    def __init__(
        self,
        actors: Actors[Any],
        *,
        num_workers: int | None,
        min_workers: int | None = None,
        tasks_per_actor: int = 2,
    ) -> None:
        self.actors, self.requested, self.tasks_per_actor = actors, num_workers, tasks_per_actor
        # Start once `min_workers` fit (default: all requested, or one when the pool follows the
        # cluster's size), then grow towards `num_workers` (None: as many as the nodes hold).
        self.min_workers = min_workers or num_workers or 1
        self.count = 0
        self.room: int | None = None  # actors that fit, once placed
        self.stats = PoolStats(0, 0, 0.0, 0.0)
        self._last_grow = 0.0

    def place(self) -> None:
        """Check that the actors fit (PlacementError otherwise), starting none of them yet."""
        self.room = self.actors.place(self.min_workers)

    def start(self) -> None:
        """Start the actors (placed first if `place` was not called); they load in the background."""
        if self.room is None:
            self.place()
        assert self.room is not None
        count = self._target(self.room)
        for i in range(count):
            self.actors.spawn(i)
        self.count = count
        log.info("started %d worker(s)", count)

    def _target(self, room: int) -> int:
        return min(room, self.requested) if self.requested is not None else room

    def _grow(self, book: Members[T]) -> None:
        """Add actors for nodes that joined (an autoscaler, spot capacity coming back), every GROW_S."""
        now = time.monotonic()
        if now - self._last_grow < GROW_S:
            return
        self._last_grow = now
        target = self._target(self.actors.room())
        while self.count < target:
            self.actors.spawn(self.count)
            book.probe(self.count, self.actors.probe(self.count))
            self.count += 1
            log.info("a node joined: started worker %d (%d in all)", self.count - 1, self.count)

    def map(self, queue: TaskQueue[T]) -> Iterator[tuple[int, R]]:
        """(key, result) pairs in completion order; raises TaskFailed when a task runs out of tries."""
        book: Members[T] = Members(self.tasks_per_actor)
        for i in range(self.count):
            book.probe(i, self.actors.probe(i))
        start, waiting, last_stall_log = time.perf_counter(), 0.0, 0.0
        try:
            while queue or book.in_flight:
                self._grow(book)
                for i in book.free_slots():
                    if not queue.ready():
                        break
                    key, task = queue.take()
                    book.assign(self.actors.submit(i, task), Assignment(key, task, i))
                if book.none_left:
                    raise TaskFailed(f"every worker failed to start; last error: {book.last_start_error}")
                t = time.perf_counter()
                # With a free slot, wake when a retry's backoff ends; with none, a ready task waits for
                # a result (a zero timeout here would be a busy loop stealing the workers' CPU).
                free = next(book.free_slots(), None) is not None
                timeout = min(WAIT_S, queue.wait_s()) if free else WAIT_S
                pending = book.pending()
                if pending:
                    finished = self.actors.wait(pending, timeout)
                else:  # every task waits out its backoff and no worker is busy or starting
                    finished = []
                    time.sleep(timeout)
                waiting += time.perf_counter() - t
                if not finished and not book.alive and t - last_stall_log > STALL_LOG_S:
                    last_stall_log = t  # e.g. lost nodes whose actors wait for room to restart
                    log.warning("no worker running; waiting for %d worker(s) to (re)start", len(book.starting))
                for handle in finished:
                    if handle in book.starting:
                        self._settle_probe(book, handle)
                    else:
                        result = self._settle_task(book, queue, handle)
                        if result is not None:
                            yield result
        finally:
            by_worker = tuple(book.results[i] for i in range(self.count))
            self.stats = PoolStats(self.count, len(book.results), time.perf_counter() - start, waiting, by_worker)

    def _settle_probe(self, book: Members[T], handle: Hashable) -> None:
        try:
            description = self.actors.outcome(handle)
        except (ActorLost, TaskError) as err:
            i = book.failed_to_start(handle, str(err))
            if book.start_failures[i] < START_TRIES:  # e.g. a runtime env that failed to set up on its node
                log.warning("worker %d failed to start (%s); replacing it", i, book.last_start_error)
                time.sleep(START_RETRY_S * book.start_failures[i])  # rare: let a node's agents settle
                self.actors.spawn(i)
                book.probe(i, self.actors.probe(i))
            else:
                log.warning("worker %d failed to start %d times: %s", i, START_TRIES, book.last_start_error)
        else:
            log.info("worker %d ready: %s", book.started(handle), description)

    def _settle_task(self, book: Members[T], queue: TaskQueue[T], handle: Hashable) -> tuple[int, R] | None:
        settled = book.settle(handle)
        name = queue.name(settled.key)
        try:
            result: R = self.actors.outcome(handle)
        except ActorLost as err:
            log.warning("%s: worker %d died (%s); rerunning it", name, settled.actor, err.reason)
            if not err.restarting:
                book.lost(settled.actor, err.reason)
            elif settled.actor in book.alive:  # feed it again once it answers after its restart
                book.probe(settled.actor, self.actors.probe(settled.actor))
            queue.failed(settled.key, settled.task, f"worker died: {err.reason}")
            return None
        except TaskError as err:
            log.warning("%s failed on worker %d: %s", name, settled.actor, err.reason)
            queue.failed(settled.key, settled.task, err.reason, final=err.permanent)
            return None
        if not book.results[settled.actor]:
            log.info("worker %d returned its first result (%s)", settled.actor, name)
        book.results[settled.actor] += 1
        return settled.key, result

    def close(self) -> None:
        self.actors.close()
        self.count = 0


def make_pool(
    actor_cls: type,
    args: tuple[Any, ...],
    *,
    local: bool,
    per_actor: dict[str, float],
    num_workers: int | None,
    min_workers: int | None = None,
    tasks_per_actor: int = 2,
    max_concurrency: int = 1,
    placement_timeout: float = 0.0,
    placement_hint: str = "",
    env: dict[str, str] | None = None,
    address: str | None = None,
) -> ActorPool[Any, Any]:
    """The pool, on Ray actors or (`local`) on actors built in this process: the only place the two are chosen.

    `max_concurrency` tasks run at once inside each actor; `env` reaches Ray actors' processes (a
    local actor shares this process's environment); `address` is the Ray cluster's (default:
    RAY_ADDRESS, as under `ray job submit`, else a new local one).
    """
    if local:
        actors: Actors[Any] = LocalActors(actor_cls, args, per_actor, max_concurrency, placement_hint)
    else:
        # Imported here: Ray takes a second to import, and --local runs never need it.
        from dit_worker.execution.ray_actors import RayActors

        actors = RayActors(
            actor_cls, args, per_actor, max_concurrency, placement_timeout, placement_hint, env or {}, address
        )
    return ActorPool(actors, num_workers=num_workers, min_workers=min_workers, tasks_per_actor=tasks_per_actor)


def cluster_gpus(address: str | None) -> float:
    """GPUs of the Ray cluster at `address` (joined first)."""
    from dit_worker.execution.ray_actors import cluster_gpus as on_ray  # Ray only when asked for

    return on_ray(address)
