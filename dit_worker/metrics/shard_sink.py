"""--metrics: Inception features computed on the worker from each generated batch, while it is still
on the device, and stored per shard (`features/part-<shard>.npz`) before the shard commits.

`jobs.fid` then merges these parts instead of reading the images back.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dit_worker.metrics.inception import InceptionFeatures, resolve_inception_weights
from dit_worker.metrics.shard_statistics import FeatureAccumulator, features_key, shard_digest
from dit_worker.storage.objects import Storage

INCEPTION_BATCH = 64


class ShardFeatures:
    """One shard's features (a `BatchSink` of the shard worker)."""

    def __init__(self, shard: int, accumulator: FeatureAccumulator, storage: Storage) -> None:
        self.shard, self.accumulator, self.storage = shard, accumulator, storage

    def add(self, sample_ids: np.ndarray, class_ids: np.ndarray | None, images: torch.Tensor) -> None:
        self.accumulator.add(images, sample_ids.tolist(), None if class_ids is None else class_ids.tolist())

    def close(self, image_sha256: list[str]) -> None:
        # The digest of the stored images lets jobs.fid tell these features from a rerun's.
        stats = self.accumulator.finish(shard_digest(image_sha256))
        self.storage.put(features_key(self.shard), stats.to_bytes())


def feature_sinks(
    weights: str | None, storage: Storage, device: torch.device, s3_endpoint: str | None
) -> Callable[[int], list[ShardFeatures]]:
    """Load Inception once per worker; each shard gets its own accumulator."""
    resolved = resolve_inception_weights(weights, s3_endpoint=s3_endpoint)
    features = InceptionFeatures(resolved.path, device=device, batch_size=INCEPTION_BATCH)
    return lambda shard: [ShardFeatures(shard, FeatureAccumulator(features, resolved.id), storage)]
