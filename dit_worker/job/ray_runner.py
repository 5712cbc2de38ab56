"""The job's shards on a Ray cluster: one ShardWorker actor per GPU (or --num-workers), through the
shared actor pool (placement checked first, dead workers restarted, each try counted).

The driver holds the manifest (three numpy columns) and per-shard bookkeeping only: images go from
each worker straight to storage, and a task carries just its shard's rows.
"""

from __future__ import annotations

from collections.abc import Callable

from dit_worker.execution.pool import ActorPool
from dit_worker.execution.stats import PoolStats
from dit_worker.execution.tries import TaskQueue
from dit_worker.job.shard_worker import SHARDS_IN_FLIGHT, ShardResult, ShardWorker, WorkerSpec
from dit_worker.job.sharding import ShardTask

CPUS_PER_WORKER = 1.0  # a scheduling token, so that CPU-only workers cannot be over-placed
PLACEMENT_HINT = (
    "Lower --num-workers or --num-gpus-per-worker, add nodes, or pass --placement-timeout SECONDS to wait for "
    "an autoscaler (CPU-only clusters: --num-gpus-per-worker 0 --num-workers N)"
)


class RayRunner:
    """Runs a job's shards on ShardWorker actors.

    Usage::

        runner = RayRunner(spec, num_workers=None, num_gpus=1.0, placement_timeout=0.0, env={})
        runner.start()  # PlacementError before anything is written when the workers cannot be placed
        stats = runner.run(TaskQueue(shard_tasks(samples, pending, 1000), max_tries=3), on_committed)
    """

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        num_workers: int | None,
        min_workers: int | None = None,
        num_gpus: float,
        placement_timeout: float,
        env: dict[str, str],
    ) -> None:
        self.pool: ActorPool[ShardTask, ShardResult] = ActorPool(
            ShardWorker,
            (spec,),
            per_actor={"CPU": CPUS_PER_WORKER, "GPU": num_gpus},
            num_workers=num_workers,
            min_workers=min_workers,
            tasks_per_actor=SHARDS_IN_FLIGHT,
            max_concurrency=SHARDS_IN_FLIGHT,  # one shard samples while the other commits
            placement_timeout=placement_timeout,
            placement_hint=PLACEMENT_HINT,
            env=env,  # --s3-endpoint must reach the workers' model cache (s3:// sources) too
        )

    def start(self) -> None:
        self.pool.start()

    def run(self, queue: TaskQueue[ShardTask], on_committed: Callable[[ShardResult], None]) -> PoolStats:
        for _, result in self.pool.map(queue):
            on_committed(result)
        return self.pool.stats

    def close(self) -> None:
        self.pool.close()
