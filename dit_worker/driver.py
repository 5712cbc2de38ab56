"""The Ray side of a job: check the cluster can place the workers, then keep each one fed with
shards until all are committed, rerunning the shards of workers that die.

The driver holds the manifest (three numpy columns) and per-shard bookkeeping only: images go from
each worker straight to storage, and a task carries just its shard's rows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from dit_worker.manifest import Samples
from dit_worker.shard_worker import SHARDS_IN_FLIGHT, RunStats, ShardResult, ShardWorker, WorkerSpec
from dit_worker.sharding import JobFailed, ShardQueue, shard_task

log = logging.getLogger(__name__)

CPUS_PER_WORKER = 1.0  # a scheduling token, so that CPU-only workers cannot be over-placed
WAIT_S = 5.0  # how often the loops wake without news (dispatch, autoscaler polling)
STALL_LOG_S = 60.0


class PlacementError(ValueError):
    """More workers asked for than the cluster can place."""


class RayRunner:
    def __init__(
        self,
        spec: WorkerSpec,
        *,
        num_workers: int | None,
        num_gpus: float,
        placement_timeout: float,
        env: dict[str, str],
    ) -> None:
        self.spec, self.requested, self.placement_timeout, self.env = spec, num_workers, placement_timeout, env
        self.per_worker = {"CPU": CPUS_PER_WORKER, "GPU": num_gpus}
        self.num_workers = 0
        self.actors: list[ray.actor.ActorHandle] = []

    def start(self) -> None:
        """Connect (`RAY_ADDRESS` under `ray job submit`), size the pool, start the workers.

        Raises PlacementError, before anything is written, when the workers cannot be placed.
        """
        if not ray.is_initialized():
            ray.init(logging_level=logging.WARNING)
        self.num_workers = self._place()
        remote = ray.remote(ShardWorker).options(
            num_cpus=self.per_worker["CPU"],
            num_gpus=self.per_worker["GPU"],
            # Killed or lost workers come back (their pipeline reloads); their shards are rerun by
            # the loop below, never by Ray, so each try is counted.
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=SHARDS_IN_FLIGHT,
            runtime_env={"env_vars": self.env} if self.env else None,
        )
        self.actors = [remote.remote(self.spec) for _ in range(self.num_workers)]
        log.info("started %d worker(s), each %s", self.num_workers, self.per_worker)

    def _place(self) -> int:
        room, nodes, totals = _room(self.per_worker)
        wanted = self.requested if self.requested is not None else room
        if wanted == 0:
            raise PlacementError(
                f"the cluster has no room for a worker needing {self.per_worker} ({len(nodes)} node(s), "
                f"{totals} in total); pass --num-gpus-per-worker 0 --num-workers N for CPU workers"
            )
        if room >= wanted:
            return wanted
        if self.placement_timeout > 0:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[self.per_worker] * wanted)
            log.info(
                "%d of %d workers fit now; asked the autoscaler for room, waiting %.0f s",
                room,
                wanted,
                self.placement_timeout,
            )
            deadline = time.monotonic() + self.placement_timeout
            while time.monotonic() < deadline and room < wanted:
                time.sleep(WAIT_S)
                room, nodes, totals = _room(self.per_worker)
            if room >= wanted:
                return wanted
        raise PlacementError(
            f"--num-workers {wanted} cannot be placed: each worker needs {self.per_worker} and the cluster's "
            f"{len(nodes)} node(s) ({totals} in total) have room for {room}. Lower --num-workers or "
            "--num-gpus-per-worker, add nodes, or pass --placement-timeout SECONDS to wait for an autoscaler"
        )

    def run(
        self, samples: Samples, shard_size: int, queue: ShardQueue, on_done: Callable[[ShardResult], None]
    ) -> RunStats:
        starting = {actor.describe.remote(): i for i, actor in enumerate(self.actors)}
        alive: set[int] = set()
        load = [0] * len(self.actors)
        inflight: dict[ray.ObjectRef, tuple[int, int]] = {}  # task -> (shard, worker)
        last_start_error = ""
        start, waiting, last_stall_log = time.perf_counter(), 0.0, 0.0
        while queue or inflight:
            for i in sorted(alive, key=load.__getitem__):
                while queue and load[i] < SHARDS_IN_FLIGHT:
                    shard = queue.take()
                    inflight[self.actors[i].run.remote(shard_task(samples, shard, shard_size))] = (shard, i)
                    load[i] += 1
            if not alive and not starting:
                raise JobFailed(f"every worker failed to start; last error: {last_start_error}")
            t = time.perf_counter()
            done, _ = ray.wait([*inflight, *starting], num_returns=1, timeout=WAIT_S)
            waiting += time.perf_counter() - t
            if not done and not alive and t - last_stall_log > STALL_LOG_S:
                last_stall_log = t  # e.g. lost nodes whose workers wait for room to restart
                log.warning("no worker running; waiting for %d worker(s) to (re)start", len(starting))
            for ref in done:
                if ref in starting:
                    i = starting.pop(ref)
                    try:
                        log.info("worker %d ready: %s", i, ray.get(ref))
                        alive.add(i)
                    except RayError as err:
                        last_start_error = _reason(err)
                        log.warning("worker %d failed to start: %s", i, last_start_error)
                    continue
                shard, i = inflight.pop(ref)
                load[i] -= 1
                try:
                    result: ShardResult = ray.get(ref)
                except RayActorError as err:
                    log.warning("shard %05d: worker %d died (%s); rerunning the shard", shard, i, _reason(err))
                    if getattr(err, "actor_init_failed", False):
                        alive.discard(i)  # its constructor failed: Ray will not restart it
                        last_start_error = _reason(err)
                    elif i in alive:  # feed it again once it answers after its restart
                        alive.discard(i)
                        starting[self.actors[i].describe.remote()] = i
                    queue.failed(shard, f"worker died: {_reason(err)}")
                except RayError as err:
                    log.warning("shard %05d failed on worker %d: %s", shard, i, _reason(err))
                    queue.failed(shard, _reason(err))
                else:
                    on_done(result)
        return RunStats(self.num_workers, time.perf_counter() - start, waiting)


def _room(per_worker: dict[str, float]) -> tuple[int, list[dict], dict[str, float]]:
    """How many workers the alive nodes could hold by their total resources, node by node."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    room = sum(
        min(math.floor(res.get(k, 0.0) / need + 1e-9) for k, need in per_worker.items() if need > 0) for res in nodes
    )
    totals = {k: sum(res.get(k, 0.0) for res in nodes) for k in per_worker}
    return room, nodes, totals


def _reason(err: RayError) -> str:
    """The original exception of a failed task, or the gist of Ray's explanation of a dead worker."""
    if isinstance(err, RayTaskError) and err.cause is not None:
        return f"{type(err.cause).__name__}: {err.cause}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    # A dead worker's message ends with the cause (the constructor's exception, or the exit reason).
    return lines[-1] if isinstance(err, RayActorError) else lines[0]
