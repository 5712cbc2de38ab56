"""Shards: contiguous slices of the manifest in sample_id order, and the retry bookkeeping around them."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from dit_worker.manifest import Samples


@dataclass(frozen=True)
class ShardTask:
    """One shard's rows: all a worker needs besides its configuration (never the whole manifest)."""

    shard: int
    samples: Samples


def num_shards(num_samples: int, shard_size: int) -> int:
    return -(-num_samples // shard_size)


def shard_task(samples: Samples, shard: int, shard_size: int) -> ShardTask:
    return ShardTask(shard, samples[shard * shard_size : (shard + 1) * shard_size])


class JobFailed(RuntimeError):
    """The job stopped before every shard was committed; committed shards stay in place for a rerun."""


class ShardFailed(JobFailed):
    """A shard that failed `max_tries` times."""


class ShardQueue:
    """Pending shards, in order; a failed shard goes back to the front until it has used its tries."""

    def __init__(self, shards: Iterable[int], max_tries: int) -> None:
        self._pending = deque(shards)
        self._tries: dict[int, int] = {}
        self.max_tries = max_tries
        self.retries = 0

    def __bool__(self) -> bool:
        return bool(self._pending)

    def take(self) -> int:
        return self._pending.popleft()

    def failed(self, shard: int, error: str) -> None:
        """Requeue `shard`, or raise ShardFailed naming it and its last error when out of tries."""
        tries = self._tries[shard] = self._tries.get(shard, 0) + 1
        if tries >= self.max_tries:
            raise ShardFailed(
                f"shard {shard:05d} failed {tries} time(s), giving up; last error: {error}. Committed shards are "
                "kept: fix the cause and rerun the same command to finish the pending ones"
            )
        self.retries += 1
        self._pending.appendleft(shard)
