"""A pool of Ray actors of one class, kept fed with keyed tasks until each task has a result.

Ray restarts a dead actor (its constructor runs again); the task it held is rerun by this loop,
never by Ray, so every try is counted by the TaskQueue and the last failure names the task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from dit_worker.execution.members import Assignment, Members
from dit_worker.execution.placement import place, room_for
from dit_worker.execution.stats import PoolStats
from dit_worker.execution.tries import PermanentError, TaskFailed, TaskQueue

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

WAIT_S = 5.0  # how often the loop wakes without news
GROW_S = 5.0  # how often the cluster is checked for room for more actors
START_TRIES = 3  # an actor whose start fails is replaced this many times before its slot is given up
START_RETRY_S = 2.0
STALL_LOG_S = 60.0


def connect(address: str | None = None) -> None:
    """Join the cluster: `address`, else RAY_ADDRESS (as under `ray job submit`), else a local one."""
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING)


class ActorPool(Generic[T, R]):
    """Actors of `actor_cls`, each built with `args`, that run tasks given as a TaskQueue.

    The actor class answers `ready()` once built (a string describing it, for the log) and
    `run(task)` for each task. Usage::

        pool = ActorPool(ShardWorker, (spec,), per_actor={"CPU": 1, "GPU": 1}, num_workers=None)
        pool.start()  # PlacementError now, before anything is written, if the cluster is too small
        for key, result in pool.map(TaskQueue(tasks, max_tries=3, name=lambda k: f"shard {k:05d}")):
            ...
        pool.close()
    """

    def __init__(
        self,
        actor_cls: type,
        args: tuple[Any, ...],
        *,
        per_actor: dict[str, float],
        num_workers: int | None,
        min_workers: int | None = None,
        tasks_per_actor: int = 2,
        max_concurrency: int = 1,
        placement_timeout: float = 0.0,
        placement_hint: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.actor_cls, self.args, self.per_actor = actor_cls, args, per_actor
        self.requested, self.tasks_per_actor, self.max_concurrency = num_workers, tasks_per_actor, max_concurrency
        self.placement_timeout, self.placement_hint, self.env = placement_timeout, placement_hint, env or {}
        # Start once `min_workers` fit (default: all requested, or one when the pool follows the
        # cluster's size), then grow towards `num_workers` (None: as many as the nodes hold).
        self.min_workers = min_workers or num_workers or 1
        self.actors: list[ray.actor.ActorHandle] = []
        self.stats = PoolStats(0, 0, 0.0, 0.0)
        self._remote: Any = None
        self._last_grow = 0.0

    def start(self) -> None:
        """Connect, check placement (PlacementError), then start the actors; they load in the background."""
        connect()
        room = place(self.per_actor, self.min_workers, self.placement_timeout, self.placement_hint)
        self._remote = ray.remote(self.actor_cls).options(
            num_cpus=self.per_actor.get("CPU", 0.0),
            num_gpus=self.per_actor.get("GPU", 0.0),
            # A dead actor (killed, node lost, spot reclaimed) is restarted wherever there is room;
            # its task is rerun by map(), never by Ray, so each try is counted.
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=self.max_concurrency,
            runtime_env={"env_vars": self.env} if self.env else None,
        )
        count = self._target(room)
        self.actors = [self._remote.remote(*self.args) for _ in range(count)]
        log.info("started %d worker(s), each %s", count, self.per_actor)

    def _target(self, room: int) -> int:
        return min(room, self.requested) if self.requested is not None else room

    def _grow(self, book: Members[T]) -> None:
        """Add actors for nodes that joined (an autoscaler, spot capacity coming back), every GROW_S."""
        now = time.monotonic()
        if now - self._last_grow < GROW_S:
            return
        self._last_grow = now
        target = self._target(room_for(self.per_actor).actors)
        while len(self.actors) < target:
            self.actors.append(self._remote.remote(*self.args))
            book.probe(len(self.actors) - 1, self.actors[-1].ready.remote())
            log.info("a node joined: started worker %d (%d in all)", len(self.actors) - 1, len(self.actors))

    def map(self, queue: TaskQueue[T]) -> Iterator[tuple[int, R]]:
        """(key, result) pairs in completion order; raises TaskFailed when a task runs out of tries."""
        book: Members[T] = Members(self.tasks_per_actor)
        for i, actor in enumerate(self.actors):
            book.probe(i, actor.ready.remote())
        start, waiting, last_stall_log = time.perf_counter(), 0.0, 0.0
        try:
            while queue or book.in_flight:
                self._grow(book)
                for i in book.free_slots():
                    if not queue.ready():
                        break
                    key, task = queue.take()
                    book.assign(self.actors[i].run.remote(task), Assignment(key, task, i))
                if book.none_left:
                    raise TaskFailed(f"every worker failed to start; last error: {book.last_start_error}")
                t = time.perf_counter()
                # With a free slot, wake when a retry's backoff ends; with none, a ready task waits for
                # a result (a zero timeout here would be a busy loop stealing the workers' CPU).
                free = next(book.free_slots(), None) is not None
                timeout = min(WAIT_S, queue.wait_s()) if free else WAIT_S
                pending = book.pending()
                if pending:
                    finished, _ = ray.wait(pending, num_returns=1, timeout=timeout)
                else:  # every task waits out its backoff and no worker is busy or starting
                    finished = []
                    time.sleep(timeout)
                waiting += time.perf_counter() - t
                if not finished and not book.alive and t - last_stall_log > STALL_LOG_S:
                    last_stall_log = t  # e.g. lost nodes whose actors wait for room to restart
                    log.warning("no worker running; waiting for %d worker(s) to (re)start", len(book.starting))
                for ref in finished:
                    if ref in book.starting:
                        self._settle_probe(book, ref)
                    else:
                        result = self._settle_task(book, queue, ref)
                        if result is not None:
                            yield result
        finally:
            by_worker = tuple(book.results[i] for i in range(len(self.actors)))
            self.stats = PoolStats(len(self.actors), len(book.results), time.perf_counter() - start, waiting, by_worker)

    def _settle_probe(self, book: Members[T], ref: ray.ObjectRef) -> None:
        try:
            description = ray.get(ref)
        except RayError as err:
            i = book.failed_to_start(ref, reason(err))
            if book.start_failures[i] < START_TRIES:  # e.g. a runtime env that failed to set up on its node
                log.warning("worker %d failed to start (%s); replacing it", i, book.last_start_error)
                time.sleep(START_RETRY_S * book.start_failures[i])  # rare: let a node's agents settle
                self.actors[i] = self._remote.remote(*self.args)
                book.probe(i, self.actors[i].ready.remote())
            else:
                log.warning("worker %d failed to start %d times: %s", i, START_TRIES, book.last_start_error)
        else:
            log.info("worker %d ready: %s", book.started(ref), description)

    def _settle_task(self, book: Members[T], queue: TaskQueue[T], ref: ray.ObjectRef) -> tuple[int, R] | None:
        settled = book.settle(ref)
        name = queue.name(settled.key)
        try:
            result: R = ray.get(ref)
        except RayActorError as err:
            log.warning("%s: worker %d died (%s); rerunning it", name, settled.actor, reason(err))
            if getattr(err, "actor_init_failed", False):
                book.lost(settled.actor, reason(err))
            elif settled.actor in book.alive:  # feed it again once it answers after its restart
                book.probe(settled.actor, self.actors[settled.actor].ready.remote())
            queue.failed(settled.key, settled.task, f"worker died: {reason(err)}")
            return None
        except RayError as err:
            log.warning("%s failed on worker %d: %s", name, settled.actor, reason(err))
            final = isinstance(err, RayTaskError) and isinstance(err.cause, PermanentError)
            queue.failed(settled.key, settled.task, reason(err), final=final)
            return None
        if not book.results[settled.actor]:
            log.info("worker %d returned its first result (%s)", settled.actor, name)
        book.results[settled.actor] += 1
        return settled.key, result

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def reason(err: RayError) -> str:
    """The original exception of a failed task, or the gist of Ray's explanation of a dead actor."""
    if isinstance(err, RayTaskError) and err.cause is not None:
        return f"{type(err.cause).__name__}: {err.cause}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    # A dead actor's message ends with the cause (the constructor's exception, or the exit reason).
    return lines[-1] if isinstance(err, RayActorError) else lines[0]
