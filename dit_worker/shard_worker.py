"""The shard loop: one pipeline per process, turning shard tasks into committed shards.

The same class runs as a Ray actor and, for --local, inside the driver's process. Two shards may be
in flight: one samples while the previous one finishes its uploads and commits, so the accelerator
does not wait on PNG encoding or storage (unless storage falls behind; see IOPool).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from dit_worker.job_config import OutputFormat
from dit_worker.manifest import Samples
from dit_worker.pipeline import DiTPipeline, load_pipeline
from dit_worker.settings import SamplingSettings
from dit_worker.shard_writer import IOPool, ShardWriter
from dit_worker.sharding import ShardTask
from dit_worker.storage import RetryMode, open_storage

SHARDS_IN_FLIGHT = 2  # per worker: the one sampling and the one committing (or queued behind it)


class BatchSink(Protocol):
    """Something fed every generated batch of a shard besides the image writer (--metrics: Inception
    features). `close` runs once all the shard's images are stored and before its metadata part is
    written, so whatever it stores is there for every committed shard."""

    def add(self, rows: Samples, images: torch.Tensor) -> None:
        """images: uint8 [N, H, W, 3] on the pipeline's device, row i is sample rows.sample_id[i]."""

    def close(self, image_sha256: list[str]) -> None:
        """image_sha256: the stored images' hashes, in the shard's sample order."""


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker needs to build its pipeline and reach the output (small, sent once)."""

    model: str
    vae: str | None
    device: str
    dtype: str
    sampling: SamplingSettings
    batch_size: int | Literal["auto"]
    out: str
    s3_endpoint: str | None
    retry_mode: RetryMode
    format: OutputFormat
    compile: bool = False
    io_threads: int = 4
    # --metrics: Inception features of every shard, stored next to it for jobs.fid. The weights are
    # a local path present on every node, an s3:// object, or None for torch-fidelity's download.
    metrics: bool = False
    inception_weights: str | None = None


@dataclass(frozen=True)
class ShardResult:
    shard: int
    samples: int
    seconds: float  # inside the worker, from taking the task to the committed metadata part


@dataclass(frozen=True)
class RunStats:
    """What a runner measured. The driver's own cost per shard is (seconds - waiting_seconds) / shards."""

    num_workers: int
    seconds: float  # the dispatch loop, from its start to the last commit
    waiting_seconds: float  # of which blocked, waiting for workers


class ShardWorker:
    def __init__(self, spec: WorkerSpec, pipe: DiTPipeline | None = None) -> None:
        """`pipe`: an already loaded pipeline for `spec` (the benchmark reuses its own)."""
        self.spec = spec
        self.pipe = pipe or load_pipeline(spec.model, spec.vae, device=spec.device, dtype=spec.dtype)
        if spec.compile:
            self.pipe.compile()
        self.plan = self.pipe.plan(spec.sampling)
        auto = spec.batch_size == "auto"
        self.batch_size = self.pipe.max_batch_size(spec.sampling) if auto else int(spec.batch_size)
        self.storage = open_storage(spec.out, s3_endpoint=spec.s3_endpoint, retry_mode=spec.retry_mode)
        self._sinks: Callable[[ShardTask], list[BatchSink]] = lambda task: []
        if spec.metrics:
            from dit_worker.metrics.shard_sink import feature_sinks

            self._sinks = feature_sinks(spec.inception_weights, self.storage, self.pipe.device, spec.s3_endpoint)
        self.pool = IOPool(spec.io_threads, max_queued=SHARDS_IN_FLIGHT * self.batch_size)
        self._sampling = threading.Lock()

    def describe(self) -> str:
        """Answers once the pipeline is loaded: the driver feeds only workers that answered."""
        return (
            f"pid {os.getpid()} on {socket.gethostname()} ({self.pipe.device}, {self.pipe.dtype}, "
            f"batch {self.batch_size}{', compiled' if self.spec.compile else ''})"
        )

    def run(self, task: ShardTask) -> ShardResult:
        start = time.perf_counter()
        spec = self.spec
        writer = ShardWriter(
            task,
            self.storage,
            self.pool,
            fmt=spec.format,
            names=self.pipe.names,
            settings=spec.sampling,
            image_size=self.pipe.image_size,
        )
        extras = self._sinks(task)
        with self._sampling:
            for lo in range(0, len(task.samples), self.batch_size):
                rows = task.samples[lo : lo + self.batch_size]
                images = self.pipe.generate_batch(rows.class_id.tolist(), rows.seed.tolist(), spec.sampling, self.plan)
                writer.add(rows, images)
                for sink in extras:
                    sink.add(rows, images)
        image_sha256 = writer.store()
        for sink in extras:
            sink.close(image_sha256)
        writer.commit()
        return ShardResult(task.shard, len(task.samples), time.perf_counter() - start)
