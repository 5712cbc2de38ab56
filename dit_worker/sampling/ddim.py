"""DDIM (Song et al. 2021, eq. 12), equal to `DDIMScheduler.from_config(<scheduler config>)`.

The scalar coefficients are computed from float32 tensors in the order diffusers computes them, so
the per-step arithmetic matches it to the last bit where the tensor ops do.
"""

from __future__ import annotations

import torch

from dit_worker.sampling.base import Sampler
from dit_worker.sampling.schedule import ScheduleConfig, Spacing, spaced_timesteps


class DDIMConfig(ScheduleConfig):
    """DDIMScheduler's keys and defaults (used where the checkpoint's config is silent)."""

    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    timestep_spacing: Spacing = "leading"


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021) with eta, on the schedule and spacing of the checkpoint's DDIMScheduler config."""

    def __init__(self, config: DDIMConfig, steps: int, *, eta: float = 0.0) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        n = config.num_train_timesteps
        timesteps = spaced_timesteps(config.timestep_spacing, n, steps, config.steps_offset)
        alpha_bar = config.alphas_cumprod_float32()
        final = torch.tensor(1.0) if config.set_alpha_to_one else alpha_bar[0]
        self.timesteps = [int(t) for t in timesteps]
        self.stochastic = eta > 0
        self.clip = config.clip_sample_range if config.clip_sample else None
        self._sqrt_beta, self._sqrt_alpha, self._sqrt_alpha_prev, self._dir, self._std = [], [], [], [], []
        for t in self.timesteps:
            # diffusers steps back by a fixed stride whatever the spacing; kept for parity.
            prev = t - n // steps
            a_t = alpha_bar[t]
            a_prev = alpha_bar[prev] if prev >= 0 else final
            variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
            std = eta * variance**0.5
            self._sqrt_beta.append(float((1 - a_t) ** 0.5))
            self._sqrt_alpha.append(float(a_t**0.5))
            self._sqrt_alpha_prev.append(float(a_prev**0.5))
            self._dir.append(float((1 - a_prev - std**2) ** 0.5))
            self._std.append(float(std))

    def step(
        self,
        i: int,
        x: torch.Tensor,
        eps: torch.Tensor,
        var: torch.Tensor | None,
        noise: torch.Tensor | None,
        state: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x0 = (x - self._sqrt_beta[i] * eps) / self._sqrt_alpha[i]
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        prev = self._sqrt_alpha_prev[i] * x0 + self._dir[i] * eps
        if self.stochastic:
            assert noise is not None
            prev = prev + self._std[i] * noise
        return prev, None
