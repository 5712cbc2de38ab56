"""The shard loop: one pipeline per process, turning shard tasks into committed shards.

The same class runs as a Ray actor and, for --local, inside the driver's process. Two shards may be
in flight: one samples while the previous one finishes its uploads and commits, so the accelerator
does not wait on image encoding or storage (unless storage falls behind; see IOPool).
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from dit_worker.backends import Generator, NativeGenerator, load_generator
from dit_worker.backends.diffusers.batch_check import BatchCheck, run_batch_check
from dit_worker.backends.native.pipeline import DiTPipeline, NonFiniteLatents
from dit_worker.execution.pool import ActorPool, make_pool
from dit_worker.execution.tries import PermanentError
from dit_worker.manifest.samples import Samples
from dit_worker.metrics.row_scores import RowScorer, row_scorers
from dit_worker.metrics.shard_sink import feature_sinks
from dit_worker.shard import SHARDS_IN_FLIGHT, BatchCheckTask, ShardResult, ShardTask, WorkerSpec, shard_name
from dit_worker.storage.objects import NoSpace, open_storage
from dit_worker.worker.shard_writer import IOPool, ShardWriter


class BatchSink(Protocol):
    """Something fed every generated batch of a shard besides the image writer (--metrics: Inception
    features). `close` runs once all the shard's images are stored and before its metadata part is
    written, so whatever it stores is there for every committed shard."""

    def add(self, sample_ids: np.ndarray, class_ids: np.ndarray | None, images: torch.Tensor) -> None:
        """images: uint8 [N, H, W, 3], row i is sample sample_ids[i]; class_ids None for rows without one."""

    def close(self, image_sha256: list[str]) -> None:
        """image_sha256: the stored images' hashes, in the shard's sample order."""


class NonFiniteSamples(PermanentError):
    """A batch whose latents are NaN or infinite: the same inputs give the same result, so no retry."""

    def __init__(self, shard: int, rows: Samples, bad: list[int]) -> None:
        def one(i: int) -> str:
            cls = "" if rows.class_id is None else f"class {int(rows.class_id[i])}, "
            return f"{int(rows.sample_id[i])} ({cls}seed {int(rows.seed[i])})"

        named = ", ".join(one(i) for i in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        super().__init__(
            f"{shard_name(shard)}: sampling produced non-finite latents for sample(s) {named}{more}; nothing of "
            "the shard was committed. Check the weights file (a corrupt checkpoint) and the sampling settings"
        )


class DiskFull(PermanentError):
    """The output's disk is full: the shard fails at once, not retried, naming the path it could not write."""


class OutOfMemory(PermanentError):
    """A batch that did not fit the worker's memory: the same batch fails the same way, so the shard is
    not retried; the message names the batch size that failed and the one measured to fit."""


# The CPU allocator's failures are plain RuntimeErrors (CUDA's are torch.OutOfMemoryError, numpy's MemoryError).
CPU_ALLOCATOR_FAILURES = ("DefaultCPUAllocator: can't allocate memory", "not enough memory")


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` is an allocation failure (never transient: the same batch asks for the same memory)."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in CPU_ALLOCATOR_FAILURES)


def first_line(err: BaseException, most: int = 200) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= most else text[: most - 3] + "..."


class ShardWorker:
    """Turns shard tasks into committed shards: samples each batch, hands the images to the IO pool,
    then writes the shard's metadata part once every image is stored.

    Built once per process (a Ray actor, or in-process for --local); `ready()` answers once the
    pipeline is loaded, `run(task)` makes one shard. Usage::

        worker = ShardWorker(spec)  # loads the pipeline; ShardWorker(spec, pipe) reuses a loaded one
        worker.ready()  # "pid 123 on host (cuda:0, torch.bfloat16, batch 64, compiled)"
        result = worker.run(shard_task(manifest, shard=3, shard_size=1000))
    """

    def __init__(self, spec: WorkerSpec, pipe: DiTPipeline | Generator | None = None) -> None:
        """`pipe`: an already loaded pipeline or generator for `spec` (the benchmark reuses its own)."""
        self.spec = spec
        settings = spec.diffusers or spec.sampling
        if isinstance(pipe, DiTPipeline):
            pipe = NativeGenerator(pipe, spec.sampling)
        self.model: Generator = pipe or load_generator(
            spec.model, spec.vae, spec.device, spec.dtype, settings, spec.text_encoder
        )
        if spec.compile:
            self.model.compile()
        auto = spec.batch_size == "auto"
        self.batch_size = self.model.max_batch_size() if auto else int(spec.batch_size)
        self.storage = open_storage(spec.out, s3_endpoint=spec.s3_endpoint, retry_mode=spec.retry_mode)
        self._sinks: Callable[[int], list[BatchSink]] = lambda shard: []
        if spec.metrics:
            self._sinks = feature_sinks(spec.inception_weights, self.storage, self.model.device, spec.s3_endpoint)
        self._scorers: Callable[[int], list[RowScorer]] = lambda shard: []
        if spec.score:
            self._scorers = row_scorers(spec.score, spec.score_embeddings, self.model.device, spec.clip_model)
        self.pool = IOPool(spec.io_threads, max_queued=SHARDS_IN_FLIGHT * self.batch_size)
        self._sampling = threading.Lock()

    def ready(self) -> str:
        """Answers once the pipeline is loaded (the pool feeds only workers that answered): who we are."""
        return (
            f"pid {os.getpid()} on {socket.gethostname()} ({self.model.device}, {self.model.dtype}, "
            f"batch {self.batch_size}{', compiled' if self.spec.compile else ''})"
        )

    def close(self) -> None:
        """Finish queued uploads and stop the IO threads."""
        self.pool.shutdown()

    def run(self, task: ShardTask | BatchCheckTask) -> ShardResult | BatchCheck:
        """Make and commit one shard; or, for a BatchCheckTask, compare batched and per-row images."""
        if isinstance(task, BatchCheckTask):
            assert self.spec.diffusers is not None, "the batch check is the diffusers generic path's"
            with self._sampling:
                return run_batch_check(self.model, self.spec.diffusers.pipeline, task.samples.rows(), self.batch_size)
        try:
            return self._run_shard(task)
        except NoSpace as err:  # retrying a full disk only fills it again: fail the job now, naming the path
            raise DiskFull(f"{shard_name(task.shard)}: {err}") from None

    def _run_shard(self, task: ShardTask) -> ShardResult:
        start = time.perf_counter()
        spec, samples = self.spec, task.rows.load()  # a portable slice is computed or read here
        writer = ShardWriter(
            task.shard,
            samples,
            self.storage,
            self.pool,
            fmt=spec.format,
            names=self.model.names,
            settings=self.model.columns,
            image_size=self.model.image_size,
            negative_prompt=spec.diffusers.negative_prompt if spec.diffusers else None,
            encoding=spec.encoding,
        )
        extras, scorers = self._sinks(task.shard), self._scorers(task.shard)
        with self._sampling:
            self.model.begin_shard(samples.rows())
            for lo in range(0, len(samples), self.batch_size):
                rows = samples[lo : lo + self.batch_size]
                failure = None
                try:
                    images = self.model.generate(rows.rows())
                except NonFiniteLatents as err:
                    raise NonFiniteSamples(task.shard, rows, err.rows) from None
                except (RuntimeError, MemoryError) as err:
                    if not out_of_memory(err):
                        raise
                    failure = first_line(err)  # leave the handler first: its traceback holds the batch's tensors
                if failure is not None:
                    raise self._out_of_memory(task.shard, rows, failure)
                writer.add(rows, images)
                for sink in extras:
                    sink.add(rows.sample_id, rows.class_id, images)
                texts = self._texts(rows) if scorers else []
                for scorer in scorers:
                    scorer.add(texts, images)
        for scorer in scorers:  # columns of the metadata part, so before store() builds it
            writer.columns.update(scorer.columns())
        image_sha256 = writer.store()
        for sink in extras:
            sink.close(image_sha256)
        writer.commit()
        return ShardResult(task.shard, len(samples), time.perf_counter() - start)

    def _texts(self, rows: Samples) -> list[str]:
        """What --score clip scores each row against: its prompt, else its class name verbatim (the
        metadata's class_name); empty for rows with neither (the driver refused clip for them)."""
        if rows.prompt is not None:
            return [p or "" for p in rows.prompt.tolist()]
        if rows.class_id is not None and self.model.names is not None:
            return [self.model.names.name(c) for c in rows.class_id.tolist()]
        return []

    def _out_of_memory(self, shard: int, rows: Samples, failure: str) -> OutOfMemory:
        """The one-line error of a batch that ran out of memory, with the batch size measured to fit:
        halving from the failed one, each tried as a one-step batch of the same rows on this worker."""
        fits = None
        size = len(rows) // 2
        while size >= 1 and fits is None:
            _free_memory(self.model.device)
            try:
                self.model.generate_steps(rows[:size].rows(), 1)
                fits = size
            except (RuntimeError, MemoryError) as err:
                if not out_of_memory(err):
                    raise
            size //= 2
        _free_memory(self.model.device)
        if fits is not None:
            advice = f"a batch of {fits} fits (measured here): rerun with --batch-size {fits}"
        else:
            advice = (
                "not even one sample fits: use a smaller --height/--width or --max-sequence-length, or a device with "
                "more memory"
            )
        return OutOfMemory(
            f"{shard_name(shard)}: out of memory on {self.model.device} at a batch of {len(rows)} "
            f"(--batch-size {self.spec.batch_size}): {failure}; {advice}"
        )


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def shard_workers(
    spec: WorkerSpec,
    *,
    local: bool,
    per_actor: dict[str, float],
    num_workers: int | None,
    model: DiTPipeline | Generator | None = None,
    **pool_options: Any,
) -> ActorPool[ShardTask, ShardResult]:
    """ShardWorkers for `spec` on the one pool, each holding SHARDS_IN_FLIGHT shards: one samples
    while the other commits. `model`: an already loaded model (in-process only, the benchmark's);
    `pool_options` go to `make_pool` (min_workers, placement, env)."""
    return make_pool(
        ShardWorker,
        (spec, model),
        local=local,
        per_actor=per_actor,
        num_workers=num_workers,
        tasks_per_actor=SHARDS_IN_FLIGHT,
        max_concurrency=SHARDS_IN_FLIGHT,
        **pool_options,
    )
