"""--local: the same shard loop in this process, no Ray; same output and resume behaviour."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from dit_worker.backends import Generator
from dit_worker.execution.stats import PoolStats
from dit_worker.execution.tries import PermanentError, TaskQueue
from dit_worker.job.shard_worker import SHARDS_IN_FLIGHT, ShardResult, ShardWorker, WorkerSpec
from dit_worker.job.sharding import ShardTask
from dit_worker.pipeline import DiTPipeline

log = logging.getLogger(__name__)


class LocalRunner:
    """Runs a job's shards on one ShardWorker in this process, two shards in flight as on an actor.

    Usage::

        runner = LocalRunner(spec)  # or LocalRunner(spec, pipe) to reuse a loaded pipeline
        runner.start()
        stats = runner.run(TaskQueue(shard_tasks(samples, pending, 1000), max_tries=3), on_committed)
    """

    def __init__(self, spec: WorkerSpec, pipe: DiTPipeline | Generator | None = None) -> None:
        self.spec = spec
        self.pipe = pipe
        self.worker: ShardWorker | None = None

    def start(self) -> None:
        self.worker = ShardWorker(self.spec, self.pipe)
        log.info("local worker ready: %s", self.worker.ready())

    def run(self, queue: TaskQueue[ShardTask], on_committed: Callable[[ShardResult], None]) -> PoolStats:
        assert self.worker is not None, "start() first"
        start, waiting, ran = time.perf_counter(), 0.0, 0
        # Two shards in flight, as on an actor: one samples while the other commits.
        with ThreadPoolExecutor(SHARDS_IN_FLIGHT, thread_name_prefix="shard") as pool:
            in_flight: dict[Future[ShardResult], tuple[int, ShardTask]] = {}
            while queue or in_flight:
                while queue.ready() and len(in_flight) < SHARDS_IN_FLIGHT:
                    key, task = queue.take()
                    in_flight[pool.submit(self.worker.run, task)] = (key, task)
                t = time.perf_counter()
                if in_flight:
                    # With a free slot, wake when a retry's backoff ends; with none, only for a result
                    # (a ready task waiting for a slot must not turn this into a busy loop).
                    wake = queue.wait_s() if len(in_flight) < SHARDS_IN_FLIGHT else float("inf")
                    timeout = None if wake == float("inf") else wake
                    finished, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
                else:  # only retries left, each waiting out its backoff
                    finished = set()
                    time.sleep(queue.wait_s())
                waiting += time.perf_counter() - t
                for future in finished:
                    key, task = in_flight.pop(future)
                    try:
                        result = future.result()
                    except Exception as err:
                        log.warning("%s failed: %s: %s", queue.name(key), type(err).__name__, err)
                        final = isinstance(err, PermanentError)
                        queue.failed(key, task, f"{type(err).__name__}: {err}", final=final)
                    else:
                        ran += 1
                        on_committed(result)
        return PoolStats(1, int(ran > 0), time.perf_counter() - start, waiting, (ran,))

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
