"""Where feature tasks run: in this process (`--local`) or on Ray actors, one per GPU.

Either way the caller gets one `ShardStatistics` per task, in completion order, and merges them;
a Ray actor loads Inception-v3 once and then serves shard after shard. At most two tasks per actor
are in flight, so tasks that carry images (ADM reference chunks) never pile up in the driver.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import torch

from dit_worker.metrics.inception import InceptionWeights
from dit_worker.metrics.shard_statistics import ShardStatistics
from dit_worker.metrics.tasks import FeatureModel, FeatureTask

log = logging.getLogger(__name__)


class Executor(Protocol):
    def map(self, tasks: Iterable[FeatureTask]) -> Iterator[ShardStatistics]: ...

    def close(self) -> None: ...


class LocalExecutor:
    def __init__(self, weights: InceptionWeights, device: torch.device, batch_size: int) -> None:
        self.model = FeatureModel(weights.path, weights.id, device, batch_size)

    def map(self, tasks: Iterable[FeatureTask]) -> Iterator[ShardStatistics]:
        for task in tasks:
            yield task.run(self.model)

    def close(self) -> None:
        pass


class FeatureActor:
    """Ray actor body: receives the weights file's bytes once (nodes need not share a filesystem)."""

    def __init__(self, weights_bytes: bytes, weights_id: str, batch_size: int) -> None:
        folder = Path(tempfile.mkdtemp(prefix="dit-worker-inception-"))
        path = folder / "inception.pth"
        path.write_bytes(weights_bytes)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = FeatureModel(path, weights_id, device, batch_size)

    def run(self, task: FeatureTask) -> ShardStatistics:
        return task.run(self.model)


class RayExecutor:
    def __init__(
        self,
        weights: InceptionWeights,
        *,
        address: str | None,
        num_workers: int | None,
        num_gpus_per_worker: float | None,
        batch_size: int,
    ) -> None:
        import ray
        from ray.util import ActorPool

        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=True)
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        per_worker = num_gpus_per_worker if num_gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if num_workers is None:
            num_workers = max(1, int(gpus // per_worker)) if per_worker else 1
        log.info("Ray: %d feature actor(s), %.2g GPU each (cluster has %.3g GPUs)", num_workers, per_worker, gpus)
        weights_ref = ray.put(weights.path.read_bytes())
        actor_cls = ray.remote(num_cpus=1, num_gpus=per_worker)(FeatureActor)
        self.actors = [actor_cls.remote(weights_ref, weights.id, batch_size) for _ in range(num_workers)]
        self.pool = ActorPool(self.actors)
        self.ray = ray

    def map(self, tasks: Iterable[FeatureTask]) -> Iterator[ShardStatistics]:
        in_flight, limit = 0, 2 * len(self.actors)
        for task in tasks:
            self.pool.submit(lambda actor, t: actor.run.remote(t), task)
            in_flight += 1
            if in_flight >= limit:
                yield self.pool.get_next_unordered()
                in_flight -= 1
        while in_flight:
            yield self.pool.get_next_unordered()
            in_flight -= 1

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
