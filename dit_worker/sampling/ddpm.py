"""Ancestral DDPM sampling as DiT's `diffusion/` package does it (the paper protocol).

Timesteps are respaced with DiT's `space_timesteps(T, "N")` and the respaced betas are
1 - alpha_bar_t / alpha_bar_prev (Nichol & Dhariwal 2021, section 4). With a learned-sigma model
the log-variance interpolates between the clipped posterior variance and beta_t
(Improved DDPM, eq. 15, "learned_range"); otherwise DiT's FIXED_LARGE variance is used.
Everything is computed in float64 as DiT does, then applied as float32 scalars.
"""

from __future__ import annotations

import numpy as np
import torch

from dit_worker.sampling.base import Sampler
from dit_worker.sampling.schedule import ScheduleConfig, dit_respaced_timesteps


class DDPMSampler(Sampler):
    """Ancestral DDPM (Ho et al. 2020) with learned-range variance (Nichol & Dhariwal 2021) and DiT's respacing."""

    stochastic = True

    def __init__(self, schedule: ScheduleConfig, steps: int, *, learned_sigma: bool) -> None:
        kept = dit_respaced_timesteps(schedule.num_train_timesteps, steps)
        alpha_bar = np.cumprod(1.0 - schedule.betas_float64())[kept]
        alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
        betas = 1.0 - alpha_bar / alpha_bar_prev
        post_var = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        # DiT clips the first (zero) posterior variance to the second before taking its log.
        first = post_var[1] if len(post_var) > 1 else betas[0]
        min_log = np.log(np.append(first, post_var[1:]))
        fixed_large_log = np.log(np.append(first, betas[1:]))

        order = list(reversed(range(len(kept))))  # respaced index, from noisiest to cleanest
        self.timesteps = [kept[j] for j in order]
        self.uses_variance = learned_sigma
        self._recip = [float(np.sqrt(1.0 / alpha_bar[j])) for j in order]
        self._recipm1 = [float(np.sqrt(1.0 / alpha_bar[j] - 1.0)) for j in order]
        self._coef_x0 = [float(betas[j] * np.sqrt(alpha_bar_prev[j]) / (1.0 - alpha_bar[j])) for j in order]
        self._coef_xt = [
            float((1.0 - alpha_bar_prev[j]) * np.sqrt(1.0 - betas[j]) / (1.0 - alpha_bar[j])) for j in order
        ]
        self._min_log = [float(min_log[j]) for j in order]
        self._max_log = [float(np.log(betas[j])) for j in order]
        self._fixed_std = [float(np.exp(0.5 * fixed_large_log[j])) for j in order]

    def step(
        self,
        i: int,
        x: torch.Tensor,
        eps: torch.Tensor,
        var: torch.Tensor | None,
        noise: torch.Tensor | None,
        state: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x0 = self._recip[i] * x - self._recipm1[i] * eps
        mean = self._coef_x0[i] * x0 + self._coef_xt[i] * x
        if i == len(self.timesteps) - 1:
            return mean, None  # t = 0: DiT masks the noise out
        assert noise is not None
        if self.uses_variance:
            assert var is not None
            frac = (var + 1) / 2
            std = torch.exp(0.5 * (frac * self._max_log[i] + (1 - frac) * self._min_log[i]))
            return mean + std * noise, None
        return mean + self._fixed_std[i] * noise, None
