"""--local: the same shard loop in this process, no Ray; same output and resume behaviour."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from dit_worker.manifest import Samples
from dit_worker.pipeline import DiTPipeline
from dit_worker.shard_worker import SHARDS_IN_FLIGHT, RunStats, ShardResult, ShardWorker, WorkerSpec
from dit_worker.sharding import ShardQueue, shard_task

log = logging.getLogger(__name__)


class LocalRunner:
    def __init__(self, spec: WorkerSpec, pipe: DiTPipeline | None = None) -> None:
        self.spec = spec
        self.pipe = pipe
        self.worker: ShardWorker | None = None

    def start(self) -> None:
        self.worker = ShardWorker(self.spec, self.pipe)
        log.info("local worker ready: %s", self.worker.describe())

    def run(
        self, samples: Samples, shard_size: int, queue: ShardQueue, on_done: Callable[[ShardResult], None]
    ) -> RunStats:
        assert self.worker is not None, "start() first"
        start, waiting = time.perf_counter(), 0.0
        # Two shards in flight, as on an actor: one samples while the other commits.
        with ThreadPoolExecutor(SHARDS_IN_FLIGHT, thread_name_prefix="shard") as pool:
            inflight: dict[Future[ShardResult], int] = {}
            while queue or inflight:
                while queue and len(inflight) < SHARDS_IN_FLIGHT:
                    shard = queue.take()
                    inflight[pool.submit(self.worker.run, shard_task(samples, shard, shard_size))] = shard
                t = time.perf_counter()
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                waiting += time.perf_counter() - t
                for future in done:
                    shard = inflight.pop(future)
                    try:
                        result = future.result()
                    except Exception as err:
                        log.warning("shard %05d failed: %s: %s", shard, type(err).__name__, err)
                        queue.failed(shard, f"{type(err).__name__}: {err}")
                    else:
                        on_done(result)
        return RunStats(1, time.perf_counter() - start, waiting)
