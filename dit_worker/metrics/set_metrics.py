"""FD-DINOv2, CMMD and the mean CLIP score of a set, from its merged embedding parts
(`embedding_statistics`) and its reference's: the metrics `jobs.fid --set-metrics` adds beside FID."""

from __future__ import annotations

import logging
from typing import Any

from dit_worker.metrics.cmmd import CMMD_SCALE, CMMD_SIGMA, cmmd, subsample
from dit_worker.metrics.dinov2 import DINOV2_SIZE
from dit_worker.metrics.embedding_statistics import CLIP, DINOV2, EmbeddingStatistics
from dit_worker.metrics.frechet import frechet_distance
from dit_worker.metrics.tasks import EmbeddingModels

log = logging.getLogger(__name__)
SET_METRICS = ("fd_dinov2", "cmmd", "clip_score")


def embedding_models_for(metrics: tuple[str, ...], dinov2: Any, clip: Any) -> EmbeddingModels:
    """The models the asked-for metrics need (resolved `HfModel`s passed in)."""
    return EmbeddingModels(
        dinov2=dinov2 if "fd_dinov2" in metrics else None,
        clip=clip if {"cmmd", "clip_score"} & set(metrics) else None,
    )


def set_metrics(
    metrics: tuple[str, ...],
    samples: dict[str, EmbeddingStatistics],
    reference: dict[str, EmbeddingStatistics] | None,
    models: EmbeddingModels,
    *,
    cmmd_samples: int,
    device: str | None,
) -> dict[str, Any]:
    """metrics.json's entries for `metrics`; a reference without images gives None for the
    reference-based ones (with a warning)."""
    out: dict[str, Any] = {}
    protocol: dict[str, Any] = {}
    ref = reference or {}
    if "fd_dinov2" in metrics:
        assert models.dinov2 is not None
        mine, theirs = samples[DINOV2], ref.get(DINOV2)
        assert mine.moments is not None
        if theirs is None or theirs.moments is None or theirs.count < 2:
            log.warning("the reference holds no images: FD-DINOv2 is not computed")
            out["fd_dinov2"] = None
        else:
            out["fd_dinov2"] = frechet_distance(mine.moments.gaussian(), theirs.moments.gaussian())
        protocol["dinov2"] = {
            "model": models.dinov2.source,
            "model_id": models.dinov2.id,
            "features": f"final-LayerNorm CLS token; PIL bicubic resize to {DINOV2_SIZE}, ImageNet mean/std (dgm-eval)",
        }
    if "cmmd" in metrics:
        mine, theirs = samples[CLIP], ref.get(CLIP)
        if theirs is None or theirs.count < 2:
            log.warning("the reference holds no images: CMMD is not computed")
            out["cmmd"] = None
        else:
            a = mine.embeddings[subsample(mine.sample_ids, cmmd_samples)]
            b = theirs.embeddings[subsample(theirs.sample_ids, cmmd_samples)]
            out["cmmd"] = cmmd(a, b, device=device)
            out["cmmd_num_samples"] = [len(a), len(b)]
        protocol["cmmd"] = {
            "sigma": CMMD_SIGMA,
            "scale": CMMD_SCALE,
            "estimator": "unbiased (within-set diagonals left out)",
            "max_samples": cmmd_samples,
            "subsample": "the max_samples samples of smallest splitmix64(sample_id), when a side has more",
        }
    if "clip_score" in metrics:
        scored = samples[CLIP].scores_summary()  # of every sample, merged from the shards' parts
        out["clip_score"] = scored.mean if scored.count else float("nan")
        out["clip_score_std"] = scored.std
        out["clip_score_count"] = scored.count
        protocol["clip_score"] = "mean over images of 100·max(cos(image, prompt), 0) (torchmetrics CLIPScore per image)"
    if models.clip is not None:
        protocol["clip"] = {"model": models.clip.source, "model_id": models.clip.id}
    out["set_metrics_protocol"] = protocol
    return out
