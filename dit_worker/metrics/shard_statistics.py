"""Per-shard partial statistics: what one worker computes from one shard's images, and their merge.

This is the seam between image generation and evaluation. A shard's partial holds:

- the float64 moments (n, sum, sum of outer products) of its pool and spatial features, which merge
  exactly by addition into the FID and sFID Gaussians of the whole set;
- its per-sample pool features and logits (float32, 12 KiB per sample), which precision/recall (k-NN),
  per-class FID and the Inception Score (seeded splits) need per sample;
- sample and class ids, so the merge can pick its subsample by sample_id and per-class FID can group;
- the id of the Inception weights, so partials made with other weights are never mixed in;
- optionally a digest of the shard's image hashes (`shard_digest`), so a partial left over from an
  earlier version of a regenerated shard is recomputed rather than reused.

Serialized as an uncompressed .npz (`to_bytes`), about 34 MB of moments + 12 KiB per sample; the
generation job stores it as `OUT/features/part-<shard:05d>.npz` (`features_key`), next to the
shard's metadata part, and `jobs.fid` reuses it instead of reading the shard's images again.

`StatisticsMerger` adds partials as they arrive in memory O(d²), not O(n·d): the moments in place
(`statistics.MomentSums`, 66 MB), and of the per-sample rows only the fixed subsample
(`subsample.Reservoir`: at most SUBSAMPLE_SIZE = 50,000 rows, 600 MB, chosen by a hash of the sample
id). The merged statistics hold every sample's moments and the subsample's rows; a set of at most
50,000 samples keeps every row, so its metrics are what they were before the subsample existed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch

from dit_worker.metrics.inception import LOGITS_DIM, POOL_DIM, SPATIAL_DIM, InceptionFeatures
from dit_worker.metrics.statistics import FeatureMoments, MomentSums, read_versioned_npz, versioned_npz
from dit_worker.metrics.subsample import SUBSAMPLE_SIZE, Reservoir, subsample_rows

FORMAT_VERSION = 1


def features_key(shard: int) -> str:
    """Where a shard's partial statistics live, relative to the output root."""
    return f"features/part-{shard:05d}.npz"


def shard_digest(image_sha256: Iterable[str]) -> str:
    """Digest of a shard's stored images: their sha256 strings (metadata column) in sample_id order."""
    return hashlib.sha256("\n".join(image_sha256).encode()).hexdigest()


@dataclass(frozen=True)
class ShardStatistics:
    """Features of one shard (or reference chunk, or a merged set): the mergeable moments of the pool and
    spatial features of every sample, and per-sample pool features and logits (of every sample for a shard; of
    the fixed subsample for a merged set)."""

    weights_id: str
    sample_ids: np.ndarray  # [m] int64, ascending
    class_ids: np.ndarray  # [m] int32 (-1 when unknown)
    pool: np.ndarray  # [m, 2048] float32
    logits: np.ndarray  # [m, 1008] float32
    pool_moments: FeatureMoments
    spatial_moments: FeatureMoments
    source_digest: str = ""  # shard_digest of the images these features came from; "" when unknown

    @property
    def count(self) -> int:
        """Samples summed in the moments: the whole shard or set (`sample_ids` may hold a subsample)."""
        return int(self.pool_moments.count)

    def subsample(self, size: int = SUBSAMPLE_SIZE) -> ShardStatistics:
        """The same moments with the per-sample rows cut to the fixed subsample (subsample.py)."""
        rows = subsample_rows(self.sample_ids, size)
        if rows.size == self.sample_ids.shape[0]:
            return self
        return replace(
            self,
            sample_ids=self.sample_ids[rows],
            class_ids=self.class_ids[rows],
            pool=self.pool[rows],
            logits=self.logits[rows],
        )

    def to_bytes(self) -> bytes:
        return versioned_npz(
            FORMAT_VERSION,
            weights_id=np.asarray(self.weights_id),
            source_digest=np.asarray(self.source_digest),
            sample_ids=self.sample_ids,
            class_ids=self.class_ids,
            pool=self.pool,
            logits=self.logits,
            **self.pool_moments.to_arrays("pool"),
            **self.spatial_moments.to_arrays("spatial"),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ShardStatistics:
        arrays = read_versioned_npz(data, FORMAT_VERSION, "shard statistics")
        return cls(
            weights_id=str(arrays["weights_id"]),
            sample_ids=arrays["sample_ids"].astype(np.int64),
            class_ids=arrays["class_ids"].astype(np.int32),
            pool=arrays["pool"].astype(np.float32),
            logits=arrays["logits"].astype(np.float32),
            pool_moments=FeatureMoments.from_arrays(arrays, "pool"),
            spatial_moments=FeatureMoments.from_arrays(arrays, "spatial"),
            source_digest=str(arrays.get("source_digest", "")),
        )


class StatisticsMerger:
    """Adds shard statistics as they arrive, in any order: the moments summed in place, the per-sample rows of
    the fixed subsample kept (`subsample.Reservoir`).

    Memory is the moments once (66 MB) plus at most `subsample` + 1/8 rows (12 KiB each), however many
    samples and shards there are.
    """

    def __init__(self, subsample: int = SUBSAMPLE_SIZE) -> None:
        self.weights_id: str | None = None
        self.pool_sums = MomentSums(POOL_DIM)
        self.spatial_sums = MomentSums(SPATIAL_DIM)
        self.rows = Reservoir(subsample)

    def add(self, part: ShardStatistics) -> None:
        if self.weights_id is None:
            self.weights_id = part.weights_id
        elif part.weights_id != self.weights_id:
            raise ValueError(
                f"shard statistics from different Inception weights cannot be merged: {self.weights_id} vs "
                f"{part.weights_id}"
            )
        self.pool_sums.add(part.pool_moments)
        self.spatial_sums.add(part.spatial_moments)
        self.rows.offer(part.sample_ids, {"class_ids": part.class_ids, "pool": part.pool, "logits": part.logits})

    def result(self) -> ShardStatistics:
        """The union's moments, and its subsample's rows in ascending sample_id order; ids must be disjoint
        across shards (a repeated id is refused whenever it falls in the subsample)."""
        if self.weights_id is None:
            raise ValueError("nothing to merge: no shard statistics")
        sample_ids, rows = self.rows.result()
        return ShardStatistics(
            weights_id=self.weights_id,
            sample_ids=sample_ids,
            class_ids=rows.get("class_ids", np.zeros(0, np.int32)),
            pool=rows.get("pool", np.zeros((0, POOL_DIM), np.float32)),
            logits=rows.get("logits", np.zeros((0, LOGITS_DIM), np.float32)),
            pool_moments=self.pool_sums.moments(),
            spatial_moments=self.spatial_sums.moments(),
        )


def merge(parts: Iterable[ShardStatistics], subsample: int = SUBSAMPLE_SIZE) -> ShardStatistics:
    merger = StatisticsMerger(subsample)
    for part in parts:
        merger.add(part)
    return merger.result()


class FeatureAccumulator:
    """Builds one shard's statistics batch by batch (call `add` per generated batch, `finish` once).

    The generation job's actor owns one `InceptionFeatures` (loaded once) and one accumulator per
    shard; memory is the per-sample features plus the moments, never the images.
    """

    def __init__(self, features: InceptionFeatures, weights_id: str) -> None:
        self.features = features
        self.weights_id = weights_id
        self._sample_ids: list[np.ndarray] = []
        self._class_ids: list[np.ndarray] = []
        self._pool: list[np.ndarray] = []
        self._logits: list[np.ndarray] = []
        self._pool_moments = MomentSums(POOL_DIM)
        self._spatial_moments = MomentSums(SPATIAL_DIM)

    def add(
        self, images: np.ndarray | torch.Tensor, sample_ids: Iterable[int], class_ids: Iterable[int] | None = None
    ) -> None:
        """images: uint8 [N, H, W, 3], numpy or torch on any device (`DiTPipeline.generate_batch(...)` as is)."""
        ids = np.asarray(list(sample_ids), np.int64)
        classes = np.full(ids.shape, -1, np.int32) if class_ids is None else np.asarray(list(class_ids), np.int32)
        if not ids.shape[0] == classes.shape[0] == images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {ids.shape[0]} sample ids and {classes.shape[0]} class ids")
        batch = self.features(images)
        self._sample_ids.append(ids)
        self._class_ids.append(classes)
        self._pool.append(batch.pool)
        self._logits.append(batch.logits)
        self._pool_moments.add(FeatureMoments.of(batch.pool))
        self._spatial_moments.add(FeatureMoments.of(batch.spatial))

    def finish(self, source_digest: str = "") -> ShardStatistics:
        """The shard's statistics; pass `shard_digest(<the shard's sha256 column>)` when known."""

        def cat(chunks: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
            return np.concatenate(chunks) if chunks else empty

        return ShardStatistics(
            weights_id=self.weights_id,
            sample_ids=cat(self._sample_ids, np.zeros(0, np.int64)),
            class_ids=cat(self._class_ids, np.zeros(0, np.int32)),
            pool=cat(self._pool, np.zeros((0, POOL_DIM), np.float32)),
            logits=cat(self._logits, np.zeros((0, LOGITS_DIM), np.float32)),
            pool_moments=self._pool_moments.moments(),
            spatial_moments=self._spatial_moments.moments(),
            source_digest=source_digest,
        )
