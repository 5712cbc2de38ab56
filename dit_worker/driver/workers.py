"""The job's shard workers on the one pool: the spec every worker is built from, and the pool that
runs them (Ray actors, one per GPU or --num-workers; or, with --local, one in this process)."""

from __future__ import annotations

from dit_worker.backends import DiffusersSettings
from dit_worker.driver.config import JobConfig
from dit_worker.driver.model_info import ModelInfo
from dit_worker.execution.pool import ActorPool
from dit_worker.shard import ShardResult, ShardTask, WorkerSpec
from dit_worker.worker.shard_worker import shard_workers

CPUS_PER_WORKER = 1.0  # a scheduling token, so that CPU-only workers cannot be over-placed
PLACEMENT_HINT = (
    "Lower --num-workers or --num-gpus-per-worker, add nodes, or pass --placement-timeout SECONDS to wait for "
    "an autoscaler (CPU-only clusters: --num-gpus-per-worker 0 --num-workers N)"
)


def worker_spec(config: JobConfig, info: ModelInfo) -> WorkerSpec:
    """What each worker is built from: the model, its resolved settings and the output."""
    return WorkerSpec(
        model=config.model,
        vae=config.vae,
        device=config.worker_device,
        dtype=config.worker_dtype,
        sampling=config.sampling,
        batch_size=config.batch_size,
        compile=config.worker_compile,
        metrics=config.metrics,
        inception_weights=config.inception_weights,
        out=config.out,
        s3_endpoint=config.s3_endpoint,
        retry_mode=config.s3_retry_mode,
        format=config.format,
        encoding=config.encoding,
        io_threads=config.io_threads,
        diffusers=info.settings if isinstance(info.settings, DiffusersSettings) else None,
        text_encoder=config.text_encoder,
        score=config.score,
        score_embeddings=config.score_embeddings,
        clip_model=config.clip_model,
    )


def shard_pool(spec: WorkerSpec, config: JobConfig) -> ActorPool[ShardTask, ShardResult]:
    """The job's ShardWorkers: one in this process with --local, else Ray actors (one per GPU or --num-workers)."""
    local = config.local
    return shard_workers(
        spec,
        local=local,
        # In this process the device is the spec's; on Ray each worker asks for its GPUs.
        per_actor={"CPU": CPUS_PER_WORKER} if local else {"CPU": CPUS_PER_WORKER, "GPU": config.num_gpus_per_worker},
        num_workers=1 if local else config.num_workers,
        min_workers=None if local else config.min_workers,
        placement_timeout=config.placement_timeout,
        placement_hint=PLACEMENT_HINT,
        # --s3-endpoint must reach the workers' model cache (s3:// sources) too, which reads the environment.
        env={"AWS_ENDPOINT_URL": config.s3_endpoint} if config.s3_endpoint else {},
    )
