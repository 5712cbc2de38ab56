"""Validated settings of one evaluation (`python -m jobs.fid`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dit_worker.metrics.clip_score import DEFAULT_CLIP
from dit_worker.metrics.cmmd import CMMD_MAX_SAMPLES
from dit_worker.metrics.dinov2 import DEFAULT_DINOV2

SetMetric = Literal["fd_dinov2", "cmmd", "clip_score"]


class FidSettings(BaseModel):
    """What `python -m jobs.fid` was asked for, validated once.

    Usage::

        FidSettings(out="s3://bucket/set", ref="VIRTUAL_imagenet256_labeled.npz", set_metrics=("fd_dinov2",))
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    out: str = Field(min_length=1)
    ref: str = Field(min_length=1)
    inception_weights: str | None = None
    allow_partial: bool = False
    per_class: bool = False
    # "ray": feature tasks on Ray actors (RAY_ADDRESS or ray_address); "local": in this process.
    mode: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    num_workers: int | None = Field(None, ge=1)
    num_gpus_per_worker: float | None = Field(None, ge=0)
    device: str | None = None
    # ADM's evaluator feeds Inception batches of 64; features do not depend on it beyond float rounding.
    batch_size: int = Field(64, ge=1, le=4096)
    s3_endpoint: str | None = None
    recompute_features: bool = False
    # Beside FID (README, Metrics): FD-DINOv2, CMMD, mean CLIP score; each model by directory or hub id.
    set_metrics: tuple[SetMetric, ...] = ()
    dinov2_model: str = Field(DEFAULT_DINOV2, min_length=1)
    clip_model: str = Field(DEFAULT_CLIP, min_length=1)
    cmmd_samples: int = Field(CMMD_MAX_SAMPLES, ge=2)
