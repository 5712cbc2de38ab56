"""Shards: contiguous slices of the manifest in sample_id order, the unit of commit and retry."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dit_worker.job.manifest import Samples


@dataclass(frozen=True)
class ShardTask:
    """One shard's rows: all a worker needs besides its configuration (never the whole manifest)."""

    shard: int
    samples: Samples


def num_shards(num_samples: int, shard_size: int) -> int:
    return -(-num_samples // shard_size)


def shard_task(samples: Samples, shard: int, shard_size: int) -> ShardTask:
    return ShardTask(shard, samples[shard * shard_size : (shard + 1) * shard_size])


def shard_tasks(samples: Samples, shards: Iterable[int], shard_size: int) -> Iterator[tuple[int, ShardTask]]:
    """(shard, task) pairs, each task sliced only when a worker is ready for it."""
    return ((k, shard_task(samples, k, shard_size)) for k in shards)


def shard_name(shard: int) -> str:
    return f"shard {shard:05d}"
