"""Per-shard statistics of the set metrics beside FID, one part per embedding model, and their merge.

- `dinov2` (FD-DINOv2): the float64 moments (n, Σx, Σxxᵀ) of the DINOv2 features, which merge by
  addition into the set's Gaussian exactly as the Inception ones do (`statistics.FeatureMoments`);
- `clip` (CMMD, CLIP score): each sample's CLIP image embedding (CMMD's kernel needs every pair, so
  no sum merges it: the merge keeps the fixed subsample of `--cmmd-samples`, `subsample.Reservoir`)
  and its CLIP score against its prompt (NaN for a sample without one; the merge keeps their count,
  mean and sum of squared deviations, `ScoreSummary`).

Stored beside the Inception part as `features/<kind>-part-<shard:05d>.npz` (`embedding_key`),
tagged with the model's id and the digest of the shard's images, so a part made by other weights
or from other images is recomputed, never mixed in. A merged set's statistics (`EmbeddingMerger`)
take O(d²) (DINOv2) or O(subsample·d) (CLIP) memory, never O(n).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dit_worker.metrics.statistics import FeatureMoments, MomentSums, read_versioned_npz, versioned_npz
from dit_worker.metrics.subsample import Reservoir

FORMAT_VERSION = 1
DINOV2, CLIP = "dinov2", "clip"
EMBEDDING_KINDS = (DINOV2, CLIP)


def embedding_key(kind: str, shard: int) -> str:
    """Where a shard's `kind` part lives, relative to the output root."""
    return f"features/{kind}-part-{shard:05d}.npz"


@dataclass(frozen=True)
class ScoreSummary:
    """Count, mean and sum of squared deviations of the scores that are not NaN: they merge exactly
    (Chan et al.'s pairwise update), so a set's mean and standard deviation need no per-sample array."""

    count: int
    mean: float
    m2: float

    @classmethod
    def of(cls, scores: np.ndarray) -> ScoreSummary:
        x = np.asarray(scores, np.float64)
        x = x[~np.isnan(x)]
        if not x.size:
            return cls(0, 0.0, 0.0)
        mean = float(x.mean())
        return cls(int(x.size), mean, float(((x - mean) ** 2).sum()))

    def __add__(self, other: ScoreSummary) -> ScoreSummary:
        n = self.count + other.count
        if not n:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / n
        return ScoreSummary(n, mean, self.m2 + other.m2 + delta * delta * self.count * other.count / n)

    @property
    def std(self) -> float:
        """The population standard deviation (np.std's default)."""
        return math.sqrt(self.m2 / self.count) if self.count else math.nan


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
    # A merged set: how many samples it has (its sample_ids / embeddings / scores then hold the CLIP
    # subsample, or nothing for DINOv2) and the summary of every sample's score; None for a shard's part.
    num_samples: int | None = None
    score_summary: ScoreSummary | None = None

    @property
    def count(self) -> int:
        return int(self.sample_ids.shape[0]) if self.num_samples is None else self.num_samples

    def scores_summary(self) -> ScoreSummary:
        """Of every sample's score: the merged summary, or this part's scores'."""
        return self.score_summary if self.score_summary is not None else ScoreSummary.of(self.scores)

    def to_bytes(self) -> bytes:
        moments = self.moments.to_arrays("features") if self.moments is not None else {}
        if self.num_samples is not None:
            moments["num_samples"] = np.asarray(self.num_samples, np.int64)
        if (summary := self.score_summary) is not None:
            moments["score_summary"] = np.asarray([summary.count, summary.mean, summary.m2], np.float64)
        return versioned_npz(
            FORMAT_VERSION,
            kind=np.asarray(self.kind),
            model_id=np.asarray(self.model_id),
            source_digest=np.asarray(self.source_digest),
            sample_ids=self.sample_ids,
            embeddings=self.embeddings,
            scores=self.scores,
            **moments,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> EmbeddingStatistics:
        arrays = read_versioned_npz(data, FORMAT_VERSION, "embedding statistics")
        return cls(
            kind=str(arrays["kind"]),
            model_id=str(arrays["model_id"]),
            sample_ids=arrays["sample_ids"].astype(np.int64),
            moments=FeatureMoments.from_arrays(arrays, "features") if "features_count" in arrays else None,
            embeddings=arrays["embeddings"].astype(np.float32),
            scores=arrays["scores"].astype(np.float64),
            source_digest=str(arrays["source_digest"]),
            num_samples=int(arrays["num_samples"]) if "num_samples" in arrays else None,
            score_summary=(
                ScoreSummary(int(arrays["score_summary"][0]), *map(float, arrays["score_summary"][1:]))
                if "score_summary" in arrays
                else None
            ),
        )


class EmbeddingMerger:
    """Adds one kind's parts as they arrive, in any order: DINOv2's moments summed in place; CLIP's
    embeddings of the fixed subsample of `subsample` samples kept, its scores summarised."""

    def __init__(self, subsample: int) -> None:
        self.subsample = subsample
        self.first: EmbeddingStatistics | None = None
        self.count = 0
        self.sums: MomentSums | None = None
        self.rows = Reservoir(subsample)
        self.scores = ScoreSummary(0, 0.0, 0.0)

    def add(self, part: EmbeddingStatistics) -> None:
        first = self.first
        if first is None:
            first = self.first = part
            self.sums = MomentSums(part.moments.dim) if part.moments is not None else None
        elif part.model_id != first.model_id or part.kind != first.kind:
            raise ValueError(
                f"{first.kind} statistics of different models cannot be merged: {first.model_id}, {part.model_id}"
            )
        self.count += part.count
        if self.sums is not None:
            assert part.moments is not None
            self.sums.add(part.moments)
        if first.kind == CLIP:
            self.rows.offer(part.sample_ids, {"embeddings": part.embeddings, "scores": part.scores})
            self.scores = self.scores + part.scores_summary()

    def result(self) -> EmbeddingStatistics:
        first = self.first
        if first is None:
            raise ValueError("nothing to merge: no embedding statistics")
        if first.kind == CLIP:
            ids, rows = self.rows.result()
            embeddings = rows.get("embeddings", np.zeros((0, first.embeddings.shape[1]), np.float32))
            scores = rows.get("scores", np.zeros(0))
        else:
            ids, embeddings, scores = np.zeros(0, np.int64), first.embeddings[:0], first.scores[:0]
        return EmbeddingStatistics(
            kind=first.kind,
            model_id=first.model_id,
            sample_ids=ids,
            moments=self.sums.moments() if self.sums is not None else None,
            embeddings=embeddings,
            scores=scores,
            num_samples=self.count,
            score_summary=self.scores if first.kind == CLIP else None,
        )


def merge_embeddings(parts: Iterable[EmbeddingStatistics], subsample: int) -> EmbeddingStatistics:
    """The union of disjoint parts of one kind and model (`EmbeddingMerger`)."""
    merger = EmbeddingMerger(subsample)
    for part in parts:
        merger.add(part)
    return merger.result()


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
