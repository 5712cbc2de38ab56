"""Units of feature work: one shard of a generated set, or one chunk of reference images.

Each task reads its own images from storage (or carries a small chunk of them), so the process that
plans the work never holds images; a task returns one `ShardFeatures`: the Inception statistics and,
when asked for, the DINOv2 and CLIP parts (`embedding_statistics`), all from one read of the images.
`FeatureActor` runs them on the one pool (`dit_worker.execution`), in this process or as a Ray actor.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from dit_worker.metrics.clip_score import ClipEmbedder, clip_scores
from dit_worker.metrics.dinov2 import Dinov2Features
from dit_worker.metrics.embedding_statistics import (
    CLIP,
    DINOV2,
    EmbeddingAccumulator,
    EmbeddingStatistics,
    embedding_key,
)
from dit_worker.metrics.hf_models import HfModel
from dit_worker.metrics.inception import InceptionFeatures
from dit_worker.metrics.shard_statistics import FeatureAccumulator, ShardStatistics, features_key, shard_digest
from dit_worker.output.reader import OutputSet, OutputSetError, Sample, Shard, batched, decode_image, prefetch
from dit_worker.storage.objects import StorageError, open_storage

log = logging.getLogger(__name__)


INCEPTION = "inception"


@dataclass(frozen=True)
class EmbeddingModels:
    """The embedding models feature actors load beside Inception (None: that metric not asked for)."""

    dinov2: HfModel | None = None
    clip: HfModel | None = None

    def ids(self) -> dict[str, str]:
        """kind -> model id, for the models asked for."""
        return {kind: m.id for kind, m in ((DINOV2, self.dinov2), (CLIP, self.clip)) if m is not None}


@dataclass(frozen=True)
class ShardFeatures:
    """What a feature task returns: the Inception statistics and one part per embedding model."""

    inception: ShardStatistics
    embeddings: dict[str, EmbeddingStatistics] = field(default_factory=dict)


class FeatureModel:
    """Inception-v3 (and the DINOv2 / CLIP models of `embeddings`) loaded on first use, once per process or actor."""

    def __init__(
        self,
        weights_path: Path,
        weights_id: str,
        device: torch.device | str,
        batch_size: int,
        embeddings: EmbeddingModels | None = None,
    ) -> None:
        self.weights_path, self.weights_id = weights_path, weights_id
        self.device, self.batch_size = torch.device(device), batch_size
        self.embeddings = embeddings or EmbeddingModels()
        self._features: InceptionFeatures | None = None
        self._dinov2: Dinov2Features | None = None
        self._clip: ClipEmbedder | None = None

    def accumulator(self) -> FeatureAccumulator:
        if self._features is None:
            self._features = InceptionFeatures(self.weights_path, self.device, self.batch_size)
        return FeatureAccumulator(self._features, self.weights_id)

    def embedding_accumulator(self, kind: str) -> EmbeddingAccumulator:
        if kind == DINOV2:
            assert self.embeddings.dinov2 is not None
            if self._dinov2 is None:
                self._dinov2 = Dinov2Features(self.embeddings.dinov2, self.device, self.batch_size)
            return EmbeddingAccumulator(DINOV2, self._dinov2.model_id, self._dinov2.dim, self._dinov2)
        assert self.embeddings.clip is not None
        if self._clip is None:
            self._clip = ClipEmbedder(self.embeddings.clip, self.device, self.batch_size)
        clip = self._clip
        return EmbeddingAccumulator(
            CLIP, clip.model_id, clip.dim, clip.images, lambda emb, prompts: clip_scores(emb, clip.texts(prompts))
        )

    def statistics(
        self,
        samples: Iterator[Sample],
        source_digest: str = "",
        prompts: Mapping[int, str] | None = None,
        parts: Iterable[str] | None = None,
    ) -> dict[str, ShardStatistics | EmbeddingStatistics]:
        """`parts` (default: Inception and every embedding model) of these samples, from one pass;
        `prompts` (sample id -> prompt) for the CLIP scores."""
        wanted = list(parts) if parts is not None else [INCEPTION, *self.embeddings.ids()]
        inception = self.accumulator() if INCEPTION in wanted else None
        others = {kind: self.embedding_accumulator(kind) for kind in wanted if kind != INCEPTION}
        for ids, classes, images in batched(samples, self.batch_size):
            if inception is not None:
                inception.add(images, ids, classes)
            for acc in others.values():
                acc.add(images, ids.tolist(), prompts)
        out: dict[str, ShardStatistics | EmbeddingStatistics] = {k: a.finish(source_digest) for k, a in others.items()}
        if inception is not None:
            out[INCEPTION] = inception.finish(source_digest)
        return out

    def features(self, samples: Iterator[Sample], prompts: Mapping[int, str] | None = None) -> ShardFeatures:
        """Every part of these samples (reference chunks: nothing stored to reuse)."""
        return _bundle(self.statistics(samples, prompts=prompts))


def _bundle(parts: Mapping[str, ShardStatistics | EmbeddingStatistics]) -> ShardFeatures:
    inception = parts[INCEPTION]
    assert isinstance(inception, ShardStatistics)
    embeddings = {k: v for k, v in parts.items() if isinstance(v, EmbeddingStatistics)}
    return ShardFeatures(inception, embeddings)


class FeatureTask(Protocol):
    """A unit of feature work: its images' statistics under `model`."""

    def run(self, model: FeatureModel) -> ShardFeatures: ...


class FeatureActor:
    """The pool's actor for feature tasks: Inception-v3 (and the `embeddings` models) loaded once,
    then task after task.

    `weights` is the weights file's path on this machine, or its bytes (Ray nodes need not share a
    filesystem); an embedding model's directory is re-fetched by its hub id on a node without it. Usage::

        pool = make_pool(FeatureActor, (weights_path, "pt_inception-2015-12-05", 64, None), local=True, ...)
    """

    def __init__(
        self,
        weights: Path | bytes,
        weights_id: str,
        batch_size: int,
        device: str | None,
        embeddings: EmbeddingModels | None = None,
    ) -> None:
        if isinstance(weights, bytes):
            path = Path(tempfile.mkdtemp(prefix="dit-worker-inception-")) / "inception.pth"
            path.write_bytes(weights)
            weights = path
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = FeatureModel(weights, weights_id, dev, batch_size, embeddings)

    def ready(self) -> str:
        return f"pid {os.getpid()} on {socket.gethostname()} ({self.model.device})"

    def run(self, task: FeatureTask) -> ShardFeatures:
        return task.run(self.model)


@dataclass(frozen=True)
class SetShardTask:
    """One committed shard of a generated set, by index: the task reads the shard's metadata part
    itself, so the process that plans the work reads none. Reuses `features/part-<shard>.npz` (and the
    embedding parts `features/<kind>-part-<shard>.npz`) when they match (same weights, same images),
    computes whatever is missing in one read of the images and stores it there for next time."""

    url: str
    s3_endpoint: str | None
    index: int
    reuse: bool = True
    store: bool = True

    def run(self, model: FeatureModel) -> ShardFeatures:
        storage = open_storage(self.url, s3_endpoint=self.s3_endpoint)
        shard = OutputSet.read_part(storage, self.index)
        output = OutputSet(storage, [shard], complete=False)
        digest = shard_digest(shard.sha256)
        found: dict[str, ShardStatistics | EmbeddingStatistics] = {}
        if self.reuse:
            if (stored := self._stored(output, shard, model.weights_id, digest)) is not None:
                found[INCEPTION] = stored
            for kind, model_id in model.embeddings.ids().items():
                if (part := self._stored_embedding(output, kind, model_id, digest)) is not None:
                    found[kind] = part
        missing = [k for k in (INCEPTION, *model.embeddings.ids()) if k not in found]
        if missing:
            prompts = shard.prompt_of()
            made = model.statistics(output.iter_samples(), digest, prompts, missing)
            if self.store:
                for kind, part in made.items():
                    key = features_key(self.index) if kind == INCEPTION else embedding_key(kind, self.index)
                    try:
                        output.storage.put(key, part.to_bytes())
                    except Exception as err:  # a read-only output must not fail the evaluation
                        log.warning("could not store %s (%s); it will be recomputed next time", key, err)
            found.update(made)
        return _bundle(found)

    def _stored(self, output: OutputSet, shard: Shard, weights_id: str, digest: str) -> ShardStatistics | None:
        key = features_key(self.index)
        try:
            stats = ShardStatistics.from_bytes(output.storage.get(key))
        except (StorageError, ValueError, KeyError, OSError):
            return None
        same_images = stats.source_digest in ("", digest)  # "" : made without a digest, trust the sample ids
        if stats.weights_id != weights_id or not np.array_equal(stats.sample_ids, shard.sample_ids) or not same_images:
            log.info("%s was made with other weights or images; recomputing", output.storage.child(key))
            return None
        return stats

    def _stored_embedding(self, output: OutputSet, kind: str, model_id: str, digest: str) -> EmbeddingStatistics | None:
        key = embedding_key(kind, self.index)
        try:
            part = EmbeddingStatistics.from_bytes(output.storage.get(key))
        except (StorageError, ValueError, KeyError, OSError):
            return None
        if part.model_id != model_id or part.source_digest != digest:
            log.info("%s was made with another model or images; recomputing", output.storage.child(key))
            return None
        return part


@dataclass(frozen=True)
class ImageKeysTask:
    """A chunk of reference images in a folder or bucket, all of `size` (height, width)."""

    url: str
    s3_endpoint: str | None
    keys: tuple[str, ...]
    first_id: int
    class_ids: tuple[int, ...]
    size: tuple[int, int]

    def run(self, model: FeatureModel) -> ShardFeatures:
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

        return model.features(prefetch(load, range(len(self.keys))))


@dataclass(frozen=True)
class ImageArrayTask:
    """A chunk of images carried with the task (rows of an ADM reference batch's arr_0)."""

    images: np.ndarray
    first_id: int
    class_ids: np.ndarray

    def run(self, model: FeatureModel) -> ShardFeatures:
        ids = range(self.first_id, self.first_id + self.images.shape[0])
        samples = (Sample(i, int(c), image) for i, c, image in zip(ids, self.class_ids, self.images, strict=True))
        return model.features(samples)
