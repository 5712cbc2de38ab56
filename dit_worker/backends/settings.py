"""Validated sampling settings, shared by the Python API, the job and the benchmark."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

# "euler" is a diffusers scheduler (EulerDiscreteScheduler), for the diffusers backends only (docs/backends.md).
SamplerName = Literal["ddpm", "ddim", "dpm-solver", "euler"]
DTypeName = Literal["float32", "bfloat16", "float16"]
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SamplingSettings(BaseModel):
    """How to sample: the sampler, its steps and the classifier-free guidance (validated once).

    For DiT these are the settings themselves; a diffusers backend resolves them against its own
    defaults (`backends.diffusers.resolve`). Usage::

        SamplingSettings(sampler="ddim", steps=50, cfg_scale=4.0, cfg_channels=4)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sampler: SamplerName = "ddpm"
    steps: int = Field(250, ge=1, le=1000)
    cfg_scale: float = Field(1.5, ge=0.0, allow_inf_nan=False)  # inf/nan would sample NaN latents
    # DiT's released code guides 3 of the 4 latent channels (docs/numerics.md).
    cfg_channels: Literal[3, 4] = 3
    eta: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    # Guidance only for model timesteps lo <= t <= hi, conditional-only elsewhere (Kynkäänniemi et al.
    # 2024, "Applying Guidance in a Limited Interval"). This CHANGES the sampling protocol: leave it
    # unset to reproduce the DiT paper or diffusers.
    guidance_interval: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _check(self) -> SamplingSettings:
        if self.eta and self.sampler != "ddim":
            raise ValueError(f"eta applies to the ddim sampler only, not {self.sampler}")
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval
            if not 0 <= lo <= hi <= 999:
                raise ValueError(f"guidance_interval must satisfy 0 <= lo <= hi <= 999, got {self.guidance_interval}")
        return self

    @property
    def guided(self) -> bool:
        return self.cfg_scale > 1.0

    def guided_at(self, t: int) -> bool:
        if not self.guided:
            return False
        return self.guidance_interval is None or self.guidance_interval[0] <= t <= self.guidance_interval[1]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`cpu`, `cuda` or `cuda:N`; None picks cuda when present."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not valid; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 / bfloat16 / float16; None is bfloat16 on GPU and float32 on CPU."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise ValueError(f"dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]
