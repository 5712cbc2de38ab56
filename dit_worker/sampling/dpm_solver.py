"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), equal to
`DPMSolverMultistepScheduler.from_config(<scheduler config>)`, the swap the diffusers DiT docs show.

Only the data-prediction multistep solver of order <= 2 with the default sigma spacing is built;
any config asking for another variant is refused rather than sampled differently.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from dit_worker.sampling.base import Sampler
from dit_worker.sampling.schedule import ScheduleConfig, Spacing, spaced_timesteps


class DPMSolverConfig(ScheduleConfig):
    """DPMSolverMultistepScheduler's keys and defaults; Literal fields list what is supported."""

    solver_order: Literal[1, 2] = 2
    algorithm_type: Literal["dpmsolver++"] = "dpmsolver++"
    solver_type: Literal["midpoint", "heun"] = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    use_karras_sigmas: Literal[False] = False
    use_exponential_sigmas: Literal[False] = False
    use_beta_sigmas: Literal[False] = False
    use_lu_lambdas: Literal[False] = False
    use_flow_sigmas: Literal[False] = False
    use_dynamic_shifting: Literal[False] = False
    final_sigmas_type: Literal["zero", "sigma_min"] = "zero"
    lambda_min_clipped: float = -math.inf
    variance_type: Literal[None] = None
    timestep_spacing: Spacing = "linspace"
    steps_offset: int = 0


def _alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VP (alpha_t, sigma_t, lambda_t = log(alpha_t / sigma_t)) from sigma = sigma_t / alpha_t."""
    alpha_t = 1 / (sigma**2 + 1) ** 0.5
    sigma_t = sigma * alpha_t
    return alpha_t, sigma_t, torch.log(alpha_t) - torch.log(sigma_t)


class DPMSolverSampler(Sampler):
    """DPM-Solver++ 2M (Lu et al. 2022), multistep, lower order at the last step as diffusers' scheduler."""

    stochastic = False

    def __init__(self, config: DPMSolverConfig, steps: int) -> None:
        n = config.num_train_timesteps
        alpha_bar = config.alphas_cumprod_float32()
        lambdas = torch.log(alpha_bar**0.5) - torch.log((1 - alpha_bar) ** 0.5)
        clipped = int(torch.searchsorted(torch.flip(lambdas, [0]), config.lambda_min_clipped))
        timesteps = spaced_timesteps(
            config.timestep_spacing, n, steps, config.steps_offset, last_timestep=n - clipped, extra_step=True
        )
        all_sigmas = (((1 - alpha_bar) / alpha_bar) ** 0.5).numpy()
        sigmas = np.interp(timesteps, np.arange(n), all_sigmas)
        last = float(all_sigmas[0]) if config.final_sigmas_type == "sigma_min" else 0.0
        sig = torch.from_numpy(np.append(sigmas, last).astype(np.float32))

        self.timesteps = [int(t) for t in timesteps]
        steps_taken = len(self.timesteps)
        self._first_order: list[bool] = []
        self._scale_x, self._scale_d0, self._scale_d1, self._alpha, self._sigma = [], [], [], [], []
        for i in range(steps_taken):
            alpha_s, sigma_s, lambda_s = _alpha_sigma(sig[i])
            alpha_t, sigma_t, lambda_t = _alpha_sigma(sig[i + 1])
            h = lambda_t - lambda_s
            last_step = i == steps_taken - 1
            lower_final = last_step and (
                config.euler_at_final
                or (config.lower_order_final and steps_taken < 15)
                or config.final_sigmas_type == "zero"
            )
            self._first_order.append(config.solver_order == 1 or i == 0 or lower_final)
            self._sigma.append(float(sigma_s))
            self._alpha.append(float(alpha_s))
            self._scale_x.append(float(sigma_t / sigma_s))
            self._scale_d0.append(float(alpha_t * (torch.exp(-h) - 1.0)))
            if self._first_order[-1]:
                self._scale_d1.append(0.0)
                continue
            _, _, lambda_prev = _alpha_sigma(sig[i - 1])
            r0 = (lambda_s - lambda_prev) / h
            if config.solver_type == "midpoint":
                d1 = 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) / r0
            else:  # heun
                d1 = -(alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) / r0
            self._scale_d1.append(float(d1))

    def step(
        self,
        i: int,
        x: torch.Tensor,
        eps: torch.Tensor,
        var: torch.Tensor | None,
        noise: torch.Tensor | None,
        state: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Data prediction x0 = (x - sigma_t * eps) / alpha_t (DPM-Solver++ works on x0, not eps).
        x0 = (x - self._sigma[i] * eps) / self._alpha[i]
        out = self._scale_x[i] * x - self._scale_d0[i] * x0
        if not self._first_order[i]:
            assert state is not None
            out = out - self._scale_d1[i] * (x0 - state)
        return out, x0
