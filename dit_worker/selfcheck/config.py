"""The self-check's options, validated once at the edge."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

CheckName = Literal["fast-path", "rows", "job", "speed", "families"]


class SelfCheckConfig(BaseModel):
    """What `python -m jobs.selfcheck` runs.

    Usage::

        SelfCheckConfig(device="cuda", quick=False, out="/tmp/selfcheck")  # every check, the real sizes timed
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: Literal["cpu", "cuda"] | None = None  # None: cuda when present
    quick: bool = False  # skip the large sizes (DiT-XL/2's timing)
    out: str | None = Field(None, min_length=1)  # keep the models, jobs and lines here (default: a temp folder)
    only: tuple[CheckName, ...] = ()  # () is every check

    @model_validator(mode="after")
    def _check(self) -> SelfCheckConfig:
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu")
        return self

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
