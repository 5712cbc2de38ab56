"""What every sampler offers the sampling loop."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Sampler(ABC):
    """A fixed plan of `len(timesteps)` steps; all per-step coefficients are precomputed host floats.

    `step` is pure: multistep history travels in the returned state, so one sampler serves any
    number of batches, concurrently too.
    """

    timesteps: list[int]  # timestep fed to the model at each step, in sampling order
    stochastic: bool  # draws one fresh noise tensor per sample at every step (docs/numerics.md, noise convention)
    uses_variance: bool = False  # reads the model's learned-sigma channels

    @abstractmethod
    def step(
        self,
        i: int,
        x: torch.Tensor,
        eps: torch.Tensor,
        var: torch.Tensor | None,
        noise: torch.Tensor | None,
        state: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x_t -> x_{t-1} given the guided epsilon (and learned-variance channels, stochastic noise)."""

    def __len__(self) -> int:
        return len(self.timesteps)
