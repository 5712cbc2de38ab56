"""Samplers by name (docs/numerics.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dit_worker.sampling.base import Sampler
from dit_worker.sampling.ddim import DDIMConfig, DDIMSampler
from dit_worker.sampling.ddpm import DDPMSampler
from dit_worker.sampling.dpm_solver import DPMSolverConfig, DPMSolverSampler
from dit_worker.sampling.schedule import ScheduleConfig

SAMPLERS = ("ddpm", "ddim", "dpm-solver")


def make_sampler(
    name: str, steps: int, scheduler_config: Mapping[str, Any], *, learned_sigma: bool, eta: float = 0.0
) -> Sampler:
    """Build a sampler; `scheduler_config` is the checkpoint's scheduler_config.json ({} when it has none).

    Raises ValueError (pydantic's ValidationError included) for unknown names or unsupported configs.
    """
    # Like diffusers' from_config: keys an in-memory config only holds as defaults are not passed on.
    defaults = set(scheduler_config.get("_use_default_values", ()))
    scheduler_config = {k: v for k, v in scheduler_config.items() if k not in defaults}
    if name == "ddpm":
        return DDPMSampler(ScheduleConfig.model_validate(scheduler_config), steps, learned_sigma=learned_sigma)
    if name == "ddim":
        return DDIMSampler(DDIMConfig.model_validate(scheduler_config), steps, eta=eta)
    if name == "dpm-solver":
        if eta:
            raise ValueError("eta applies to the ddim sampler only")
        return DPMSolverSampler(DPMSolverConfig.model_validate(scheduler_config), steps)
    raise ValueError(f"sampler {name!r} is not one of DiT's native samplers; choose one of {', '.join(SAMPLERS)}")


__all__ = ["SAMPLERS", "Sampler", "make_sampler"]
