"""Units of feature work: one shard of a generated set, or one chunk of reference images.

Each task reads its own images from storage (or carries a small chunk of them), so the process that
plans the work never holds images; a task returns one `ShardStatistics`. `FeatureActor` runs them
on the one pool (`dit_worker.execution`), in this process or as a Ray actor.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from dit_worker.metrics.inception import InceptionFeatures
from dit_worker.metrics.shard_statistics import FeatureAccumulator, ShardStatistics, features_key, shard_digest
from dit_worker.output.reader import OutputSet, OutputSetError, Sample, Shard, batched, decode_image, prefetch
from dit_worker.storage.objects import StorageError, open_storage

log = logging.getLogger(__name__)


class FeatureModel:
    """Inception-v3 loaded on first use, once per process or actor."""

    def __init__(self, weights_path: Path, weights_id: str, device: torch.device | str, batch_size: int) -> None:
        self.weights_path, self.weights_id = weights_path, weights_id
        self.device, self.batch_size = torch.device(device), batch_size
        self._features: InceptionFeatures | None = None

    def accumulator(self) -> FeatureAccumulator:
        if self._features is None:
            self._features = InceptionFeatures(self.weights_path, self.device, self.batch_size)
        return FeatureAccumulator(self._features, self.weights_id)

    def statistics(self, samples: Iterator[Sample], source_digest: str = "") -> ShardStatistics:
        acc = self.accumulator()
        for ids, classes, images in batched(samples, self.batch_size):
            acc.add(images, ids, classes)
        return acc.finish(source_digest)


class FeatureTask(Protocol):
    """A unit of feature work: its images' statistics under `model`."""

    def run(self, model: FeatureModel) -> ShardStatistics: ...


class FeatureActor:
    """The pool's actor for feature tasks: Inception-v3 loaded once, then task after task.

    `weights` is the weights file's path on this machine, or its bytes (Ray nodes need not share a
    filesystem). Usage::

        pool = make_pool(FeatureActor, (weights_path, "pt_inception-2015-12-05", 64, None), local=True, ...)
    """

    def __init__(self, weights: Path | bytes, weights_id: str, batch_size: int, device: str | None) -> None:
        if isinstance(weights, bytes):
            path = Path(tempfile.mkdtemp(prefix="dit-worker-inception-")) / "inception.pth"
            path.write_bytes(weights)
            weights = path
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = FeatureModel(weights, weights_id, dev, batch_size)

    def ready(self) -> str:
        return f"pid {os.getpid()} on {socket.gethostname()} ({self.model.device})"

    def run(self, task: FeatureTask) -> ShardStatistics:
        return task.run(self.model)


@dataclass(frozen=True)
class SetShardTask:
    """One committed shard of a generated set. Reuses `features/part-<shard>.npz` when it matches
    (same Inception weights, same sample ids), else computes it and stores it there for next time."""

    url: str
    s3_endpoint: str | None
    shard: Shard
    reuse: bool = True
    store: bool = True

    def run(self, model: FeatureModel) -> ShardStatistics:
        output = OutputSet(open_storage(self.url, s3_endpoint=self.s3_endpoint), [self.shard], complete=False)
        key, digest = features_key(self.shard.index), shard_digest(self.shard.sha256)
        if self.reuse and (stored := self._stored(output, key, model.weights_id, digest)) is not None:
            return stored
        stats = model.statistics(output.iter_samples(), digest)
        if self.store:
            try:
                output.storage.put(key, stats.to_bytes())
            except Exception as err:  # a read-only output must not fail the evaluation
                log.warning("could not store %s (%s); features will be recomputed next time", key, err)
        return stats

    def _stored(self, output: OutputSet, key: str, weights_id: str, digest: str) -> ShardStatistics | None:
        try:
            stats = ShardStatistics.from_bytes(output.storage.get(key))
        except (StorageError, ValueError, KeyError, OSError):
            return None
        same_images = stats.source_digest in ("", digest)  # "" : made without a digest, trust the sample ids
        if (
            stats.weights_id != weights_id
            or not np.array_equal(stats.sample_ids, self.shard.sample_ids)
            or not same_images
        ):
            log.info("%s was made with other weights or images; recomputing", output.storage.child(key))
            return None
        return stats


@dataclass(frozen=True)
class ImageKeysTask:
    """A chunk of reference images in a folder or bucket, all of `size` (height, width)."""

    url: str
    s3_endpoint: str | None
    keys: tuple[str, ...]
    first_id: int
    class_ids: tuple[int, ...]
    size: tuple[int, int]

    def run(self, model: FeatureModel) -> ShardStatistics:
        storage = open_storage(self.url, s3_endpoint=self.s3_endpoint)

        def load(i: int) -> Sample:
            where = storage.child(self.keys[i])
            image = decode_image(storage.get(self.keys[i]), where)
            if image.shape[:2] != self.size:
                raise OutputSetError(
                    f"{where}: reference image is {image.shape[1]}x{image.shape[0]}, the others and the set are "
                    f"{self.size[1]}x{self.size[0]}; resize and crop the reference to the set's size first"
                )
            return Sample(self.first_id + i, self.class_ids[i], image)

        return model.statistics(prefetch(load, range(len(self.keys))))


@dataclass(frozen=True)
class ImageArrayTask:
    """A chunk of images carried with the task (rows of an ADM reference batch's arr_0)."""

    images: np.ndarray
    first_id: int
    class_ids: np.ndarray

    def run(self, model: FeatureModel) -> ShardStatistics:
        acc = model.accumulator()
        for lo in range(0, self.images.shape[0], model.batch_size):
            hi = lo + model.batch_size
            ids = np.arange(self.first_id + lo, self.first_id + min(hi, self.images.shape[0]))
            acc.add(self.images[lo:hi], ids, self.class_ids[lo:hi])
        return acc.finish()
