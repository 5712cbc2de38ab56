"""Per-shard statistics of the set metrics beside FID, one part per embedding model.

- `dinov2` (FD-DINOv2): the float64 moments (n, Σx, Σxxᵀ) of the DINOv2 features, which merge by
  addition into the set's Gaussian exactly as the Inception ones do (`statistics.FeatureMoments`);
- `clip` (CMMD, CLIP score): each sample's CLIP image embedding (CMMD's kernel needs every pair, so
  no sum merges it; the evaluation takes a fixed subsample, `cmmd.subsample`) and its CLIP score
  against its prompt (NaN for a sample without one).

Stored beside the Inception part as `features/<kind>-part-<shard:05d>.npz` (`embedding_key`),
tagged with the model's id and the digest of the shard's images, so a part made by other weights
or from other images is recomputed, never mixed in.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dit_worker.metrics.statistics import FeatureMoments

FORMAT_VERSION = 1
DINOV2, CLIP = "dinov2", "clip"
EMBEDDING_KINDS = (DINOV2, CLIP)


def embedding_key(kind: str, shard: int) -> str:
    """Where a shard's `kind` part lives, relative to the output root."""
    return f"features/{kind}-part-{shard:05d}.npz"


@dataclass(frozen=True)
class EmbeddingStatistics:
    """One shard's (or reference chunk's) statistics under one embedding model."""

    kind: str  # DINOV2 or CLIP
    model_id: str
    sample_ids: np.ndarray  # [n] int64, ascending
    moments: FeatureMoments | None  # DINOV2: the FD sums; CLIP: None
    embeddings: np.ndarray  # CLIP: [n, d] float32 image embeddings (not normalised); DINOV2: [0, d]
    scores: np.ndarray  # CLIP: [n] float64 CLIP scores, NaN without a prompt; DINOV2: [0]
    source_digest: str = ""

    @property
    def count(self) -> int:
        return int(self.sample_ids.shape[0])

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        moments = self.moments.to_arrays("features") if self.moments is not None else {}
        np.savez(
            buf,
            format_version=np.asarray(FORMAT_VERSION),
            kind=np.asarray(self.kind),
            model_id=np.asarray(self.model_id),
            source_digest=np.asarray(self.source_digest),
            sample_ids=self.sample_ids,
            embeddings=self.embeddings,
            scores=self.scores,
            **moments,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> EmbeddingStatistics:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if int(arrays.get("format_version", -1)) != FORMAT_VERSION:
            raise ValueError(f"embedding statistics format {arrays.get('format_version')}, expected {FORMAT_VERSION}")
        return cls(
            kind=str(arrays["kind"]),
            model_id=str(arrays["model_id"]),
            sample_ids=arrays["sample_ids"].astype(np.int64),
            moments=FeatureMoments.from_arrays(arrays, "features") if "features_count" in arrays else None,
            embeddings=arrays["embeddings"].astype(np.float32),
            scores=arrays["scores"].astype(np.float64),
            source_digest=str(arrays["source_digest"]),
        )


def merge_embeddings(parts: Sequence[EmbeddingStatistics]) -> EmbeddingStatistics:
    """The union of disjoint parts of one kind and model, samples in ascending sample_id order."""
    if not parts:
        raise ValueError("nothing to merge: no embedding statistics")
    first = parts[0]
    if others := {p.model_id for p in parts} - {first.model_id}:
        raise ValueError(f"{first.kind} statistics of different models cannot be merged: {first.model_id}, {others}")
    ids = np.concatenate([p.sample_ids for p in parts])
    order = np.argsort(ids, kind="stable")
    moments = None
    if first.moments is not None:
        moments = first.moments
        for p in parts[1:]:
            assert p.moments is not None
            moments = moments + p.moments
    return EmbeddingStatistics(
        kind=first.kind,
        model_id=first.model_id,
        sample_ids=ids[order],
        moments=moments,
        embeddings=np.concatenate([p.embeddings for p in parts])[order] if first.kind == CLIP else first.embeddings,
        scores=np.concatenate([p.scores for p in parts])[order] if first.kind == CLIP else first.scores,
    )


class EmbeddingAccumulator:
    """Builds one shard's part batch by batch, like `shard_statistics.FeatureAccumulator`.

    `embed` maps uint8 [N, H, W, 3] images to float32 [N, d] features; `score` (CLIP only) maps
    (image embeddings, prompts) to CLIP scores. DINOv2 keeps sums only, CLIP every sample's row.
    """

    def __init__(
        self,
        kind: str,
        model_id: str,
        dim: int,
        embed: Callable[[np.ndarray | torch.Tensor], np.ndarray],
        score: Callable[[np.ndarray, Sequence[str]], np.ndarray] | None = None,
    ) -> None:
        self.kind, self.model_id, self.dim, self.embed, self.score = kind, model_id, dim, embed, score
        self._ids: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._moments = FeatureMoments.zeros(dim) if kind == DINOV2 else None

    def add(
        self, images: np.ndarray | torch.Tensor, sample_ids: Sequence[int], prompts: Mapping[int, str] | None = None
    ) -> None:
        ids = np.asarray(list(sample_ids), np.int64)
        features = self.embed(images)
        self._ids.append(ids)
        if self._moments is not None:
            self._moments = self._moments + FeatureMoments.of(features)
            return
        self._rows.append(features.astype(np.float32))
        scores = np.full(len(ids), np.nan)
        texts = [(i, prompts.get(int(s))) for i, s in enumerate(ids)] if prompts else []
        if self.score is not None and (texts := [(i, p) for i, p in texts if p]):
            rows = np.asarray([i for i, _ in texts])
            scores[rows] = self.score(features[rows], [p for _, p in texts])
        self._scores.append(scores)

    def finish(self, source_digest: str = "") -> EmbeddingStatistics:
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64)
        if self._moments is not None:
            return EmbeddingStatistics(
                self.kind, self.model_id, ids, self._moments, np.zeros((0, self.dim), np.float32), np.zeros(0),
                source_digest,
            )  # fmt: skip
        rows = np.concatenate(self._rows) if self._rows else np.zeros((0, self.dim), np.float32)
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        return EmbeddingStatistics(self.kind, self.model_id, ids, None, rows, scores, source_digest)
