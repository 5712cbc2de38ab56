"""Noise schedules and timestep spacings shared by the samplers.

Two precisions on purpose: DiT's `diffusion/` package builds its schedule in float64 numpy, while
diffusers' schedulers build theirs in float32 torch. Each sampler uses the one of the implementation
it must equal (docs/numerics.md).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, field_validator

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
Spacing = Literal["linspace", "leading", "trailing"]


class ScheduleConfig(BaseModel):
    """The training noise schedule: the keys every diffusers scheduler shares, with their defaults.

    Defaults are DiT's own schedule (linear betas 1e-4..0.02 over 1000 steps), which are also the
    diffusers defaults, so an original checkpoint without a scheduler config gets the same schedule.
    Unknown keys are ignored, as diffusers' `from_config` does.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: BetaSchedule = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: Literal["epsilon"] = "epsilon"
    thresholding: Literal[False] = False
    rescale_betas_zero_snr: Literal[False] = False

    @field_validator("num_train_timesteps")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"num_train_timesteps must be at least 2, got {v}")
        return v

    @field_validator("trained_betas")
    @classmethod
    def _betas(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and not all(0.0 < b < 1.0 for b in v):
            raise ValueError("trained_betas must all lie in (0, 1)")
        return v

    def betas_float64(self) -> np.ndarray:
        """DiT's get_named_beta_schedule, in float64."""
        n = self.num_train_timesteps
        if self.trained_betas is not None:
            return self._checked(np.asarray(self.trained_betas, dtype=np.float64))
        if self.beta_schedule == "linear":
            return np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)
        if self.beta_schedule == "scaled_linear":
            return np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float64) ** 2
        return np.asarray(_cosine_betas(n), dtype=np.float64)

    def betas_float32(self) -> torch.Tensor:
        """diffusers' betas, built in float32 torch exactly as its schedulers build them."""
        n = self.num_train_timesteps
        if self.trained_betas is not None:
            return torch.tensor(self._checked(np.asarray(self.trained_betas)), dtype=torch.float32)
        if self.beta_schedule == "linear":
            return torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float32)
        if self.beta_schedule == "scaled_linear":
            return torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float32) ** 2
        return torch.tensor(_cosine_betas(n), dtype=torch.float32)

    def alphas_cumprod_float32(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas_float32(), dim=0)

    def _checked(self, betas: np.ndarray) -> np.ndarray:
        if len(betas) != self.num_train_timesteps:
            raise ValueError(
                f"trained_betas has {len(betas)} entries but num_train_timesteps is {self.num_train_timesteps}"
            )
        return betas


def _cosine_betas(n: int, max_beta: float = 0.999) -> list[float]:
    """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021, eq. 17), betas capped at 0.999."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]


def check_steps(steps: int, num_train_timesteps: int) -> None:
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {num_train_timesteps}, got {steps}")


def dit_respaced_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Kept timesteps of DiT's `space_timesteps(num_train_timesteps, str(steps))`, ascending.

    Python's round() (half to even) is part of the definition: it picks the exact timesteps.
    """
    check_steps(steps, num_train_timesteps)
    stride = 1.0 if steps == 1 else (num_train_timesteps - 1) / (steps - 1)
    taken, cursor = [], 0.0
    for _ in range(steps):
        taken.append(round(cursor))
        cursor += stride
    return sorted(set(taken))


def spaced_timesteps(
    spacing: Spacing,
    num_train_timesteps: int,
    steps: int,
    steps_offset: int,
    *,
    last_timestep: int | None = None,
    extra_step: bool = False,
) -> np.ndarray:
    """Descending timesteps as diffusers' `set_timesteps` spaces them.

    `extra_step` and `last_timestep` reproduce DPMSolverMultistepScheduler, which spaces steps + 1
    points below its lambda-clipped last timestep and drops the final one.
    """
    check_steps(steps, num_train_timesteps)
    last = num_train_timesteps if last_timestep is None else last_timestep
    n = steps + 1 if extra_step else steps
    if spacing == "linspace":
        ts = np.linspace(0, last - 1, n).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(0, n) * (last // n)).round()[::-1] + steps_offset
    else:  # trailing
        ts = np.round(np.arange(last, 0, -num_train_timesteps / steps)) - 1
    ts = ts.astype(np.int64)
    ts = ts[:-1].copy() if extra_step and spacing != "trailing" else ts.copy()
    if ts.max() >= num_train_timesteps:  # "leading" + steps_offset at steps == num_train_timesteps
        raise ValueError(
            f"{steps} steps with {spacing!r} spacing and steps_offset {steps_offset} reach timestep "
            f"{int(ts.max())}, beyond the schedule's {num_train_timesteps}; use fewer steps"
        )
    return ts
