"""Where feature tasks run: in this process (`--local`) or on Ray actors, one per GPU.

Either way the caller gets one `ShardStatistics` per task, in completion order, and merges them;
a Ray actor loads Inception-v3 once and then serves shard after shard. On Ray the tasks run on the
same actor pool as the generation job (`dit_worker.execution`).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import ray
import torch

from dit_worker.execution.pool import ActorPool, connect
from dit_worker.execution.tries import TaskQueue
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

    def ready(self) -> str:
        return f"pid {os.getpid()} on {socket.gethostname()} ({self.model.device})"

    def run(self, task: FeatureTask) -> ShardStatistics:
        return task.run(self.model)


class RayExecutor:
    """Feature tasks on the shared actor pool: one FeatureActor per GPU (one actor without GPUs),
    placement checked before any work, dead actors restarted, each task tried up to `max_tries`."""

    def __init__(
        self,
        weights: InceptionWeights,
        *,
        address: str | None,
        num_workers: int | None,
        num_gpus_per_worker: float | None,
        batch_size: int,
        max_tries: int = 3,
    ) -> None:
        connect(address or os.environ.get("RAY_ADDRESS") or "auto")
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        per_worker = num_gpus_per_worker if num_gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if num_workers is None and not per_worker:
            num_workers = 1
        self.pool: ActorPool[FeatureTask, ShardStatistics] = ActorPool(
            FeatureActor,
            (ray.put(weights.path.read_bytes()), weights.id, batch_size),
            per_actor={"CPU": 1.0, "GPU": per_worker},
            num_workers=num_workers,
            tasks_per_actor=2,  # tasks that carry images (ADM reference chunks) never pile up in the driver
            placement_hint="lower --num-workers or --num-gpus-per-worker, or add nodes",
        )
        self.pool.start()
        count = len(self.pool.actors)
        log.info("Ray: %d feature actor(s), %.2g GPU each (cluster has %.3g GPUs)", count, per_worker, gpus)
        self.max_tries = max_tries

    def map(self, tasks: Iterable[FeatureTask]) -> Iterator[ShardStatistics]:
        queue = TaskQueue(enumerate(tasks), self.max_tries, name=lambda k: f"feature task {k}")
        for _, stats in self.pool.map(queue):
            yield stats

    def close(self) -> None:
        self.pool.close()
