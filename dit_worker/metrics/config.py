"""Validated settings of one evaluation (`python -m jobs.fid`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FidSettings(BaseModel):
    """One evaluation's settings (`python -m jobs.fid`), validated once at the edge."""

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
