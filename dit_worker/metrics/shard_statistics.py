"""Per-shard partial statistics: what one worker computes from one shard's images.

This is the seam between image generation and evaluation. A shard's partial holds:

- the float64 moments (n, sum, sum of outer products) of its pool and spatial features, which merge
  exactly by addition into the FID and sFID Gaussians of the whole set;
- its per-sample pool features and logits (float32, 12 KiB per sample), which precision/recall (k-NN
  over the whole set) and the Inception Score (seeded splits over the whole set) need per sample;
- sample and class ids, so the merge can order samples by sample_id and per-class FID can group them;
- the id of the Inception weights, so partials made with other weights are never mixed in;
- optionally a digest of the shard's image hashes (`shard_digest`), so a partial left over from an
  earlier version of a regenerated shard is recomputed rather than reused.

Serialized as an uncompressed .npz (`to_bytes`), about 34 MB of moments + 12 KiB per sample; the
generation job stores it as `OUT/features/part-<shard:05d>.npz` (`features_key`), next to the
shard's metadata part, and `jobs.fid` reuses it instead of reading the shard's images again.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from dit_worker.metrics.inception import LOGITS_DIM, POOL_DIM, SPATIAL_DIM, InceptionFeatures
from dit_worker.metrics.statistics import FeatureMoments

FORMAT_VERSION = 1


def features_key(shard: int) -> str:
    """Where a shard's partial statistics live, relative to the output root."""
    return f"features/part-{shard:05d}.npz"


def shard_digest(image_sha256: Iterable[str]) -> str:
    """Digest of a shard's stored images: their sha256 strings (metadata column) in sample_id order."""
    return hashlib.sha256("\n".join(image_sha256).encode()).hexdigest()


@dataclass(frozen=True)
class ShardStatistics:
    """Features of one shard (or reference chunk): per-sample pool features and logits, and the mergeable moments of
    the pool and spatial features."""

    weights_id: str
    sample_ids: np.ndarray  # [n] int64
    class_ids: np.ndarray  # [n] int32 (-1 when unknown)
    pool: np.ndarray  # [n, 2048] float32
    logits: np.ndarray  # [n, 1008] float32
    pool_moments: FeatureMoments
    spatial_moments: FeatureMoments
    source_digest: str = ""  # shard_digest of the images these features came from; "" when unknown

    @property
    def count(self) -> int:
        return int(self.sample_ids.shape[0])

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            format_version=np.asarray(FORMAT_VERSION),
            weights_id=np.asarray(self.weights_id),
            source_digest=np.asarray(self.source_digest),
            sample_ids=self.sample_ids,
            class_ids=self.class_ids,
            pool=self.pool,
            logits=self.logits,
            **self.pool_moments.to_arrays("pool"),
            **self.spatial_moments.to_arrays("spatial"),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ShardStatistics:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        version = int(arrays.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise ValueError(f"shard statistics format {version}, expected {FORMAT_VERSION}")
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
    """Adds shard statistics as they arrive: one running sum of moments, per-sample arrays listed.

    Memory is the moments once plus the per-sample features, however many shards there are.
    """

    def __init__(self) -> None:
        self.weights_id: str | None = None
        self.pool_moments = FeatureMoments.zeros(POOL_DIM)
        self.spatial_moments = FeatureMoments.zeros(SPATIAL_DIM)
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, part: ShardStatistics) -> None:
        if self.weights_id is None:
            self.weights_id = part.weights_id
        elif part.weights_id != self.weights_id:
            raise ValueError(
                f"shard statistics from different Inception weights cannot be merged: {self.weights_id} vs "
                f"{part.weights_id}"
            )
        self.pool_moments = self.pool_moments + part.pool_moments
        self.spatial_moments = self.spatial_moments + part.spatial_moments
        self._parts.append((part.sample_ids, part.class_ids, part.pool, part.logits))

    def result(self) -> ShardStatistics:
        """The union, samples in ascending sample_id order; ids must be disjoint across shards."""
        if self.weights_id is None:
            raise ValueError("nothing to merge: no shard statistics")
        sample_ids = np.concatenate([p[0] for p in self._parts])
        order = np.argsort(sample_ids, kind="stable")
        sample_ids = sample_ids[order]
        dup = sample_ids[1:][sample_ids[1:] == sample_ids[:-1]]
        if dup.size:
            raise ValueError(f"sample ids appear in more than one shard: {dup[:5].tolist()}")
        return ShardStatistics(
            weights_id=self.weights_id,
            sample_ids=sample_ids,
            class_ids=np.concatenate([p[1] for p in self._parts])[order],
            pool=np.concatenate([p[2] for p in self._parts])[order],
            logits=np.concatenate([p[3] for p in self._parts])[order],
            pool_moments=self.pool_moments,
            spatial_moments=self.spatial_moments,
        )


def merge(parts: Iterable[ShardStatistics]) -> ShardStatistics:
    merger = StatisticsMerger()
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
        self._pool_moments = FeatureMoments.zeros(POOL_DIM)
        self._spatial_moments = FeatureMoments.zeros(SPATIAL_DIM)

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
        self._pool_moments = self._pool_moments + FeatureMoments.of(batch.pool)
        self._spatial_moments = self._spatial_moments + FeatureMoments.of(batch.spatial)

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
            pool_moments=self._pool_moments,
            spatial_moments=self._spatial_moments,
            source_digest=source_digest,
        )
