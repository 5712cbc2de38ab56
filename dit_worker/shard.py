"""What crosses the pool between the driver and its workers: the worker's spec (sent once), shard
tasks (ranges of manifest rows, the unit of commit and retry, carried as RowSlices) and
their results, and the generic path's batch check.

It sits beneath both sides so that a worker never imports the driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from dit_worker.backends import DiffusersSettings, TextEncoderPlacement
from dit_worker.backends.settings import SamplingSettings
from dit_worker.manifest.samples import Samples
from dit_worker.manifest.sources import Manifest, RowSlice
from dit_worker.output.encoding import PNG, ImageEncoding
from dit_worker.output.layout import OutputFormat
from dit_worker.storage.objects import RetryMode

SHARDS_IN_FLIGHT = 2  # per worker: the one sampling and the one committing (or queued behind it)


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
    encoding: ImageEncoding = PNG  # --image-format / --quality
    # Models that run through diffusers (docs/backends.md): their resolved settings, which replace
    # `sampling`, and where the text encoder lives.
    diffusers: DiffusersSettings | None = None
    text_encoder: TextEncoderPlacement = "device"
    # --score values (dit_worker.metrics.row_scores): per-image score (and CLIP embedding) columns.
    score: tuple[str, ...] = ()
    score_embeddings: bool = False
    clip_model: str | None = None  # --clip-model: the CLIP of clip and aesthetic (None: row_scores.clip_model)


@dataclass(frozen=True)
class ShardTask:
    """One shard's rows: all a worker needs besides its spec (never the whole manifest). `rows`
    is computed or read on the worker when it can be (RowSlice.portable), else it arrives loaded."""

    shard: int
    rows: RowSlice


@dataclass(frozen=True)
class BatchCheckTask:
    """The generic path's batch check (docs/backends.md): these rows made as one batch and one at a
    time on a worker, before the job writes anything."""

    samples: Samples


@dataclass(frozen=True)
class ShardResult:
    """A committed shard, as its worker reports it."""

    shard: int
    samples: int
    seconds: float  # inside the worker, from taking the task to the committed metadata part


def num_shards(num_samples: int, shard_size: int) -> int:
    return -(-num_samples // shard_size)


def shard_task(manifest: Manifest, shard: int, shard_size: int) -> ShardTask:
    """Shard k: manifest rows [k * shard_size, (k + 1) * shard_size), loaded here unless a worker can."""
    rows = manifest.rows(shard * shard_size, min((shard + 1) * shard_size, manifest.num_rows))
    return ShardTask(shard, rows if rows.portable else rows.load())


def shard_tasks(manifest: Manifest, shards: Iterable[int], shard_size: int) -> Iterator[tuple[int, ShardTask]]:
    """(shard, task) pairs, each task made only when a worker is ready for it."""
    return ((k, shard_task(manifest, k, shard_size)) for k in shards)


def shard_name(shard: int) -> str:
    return f"shard {shard:05d}"
