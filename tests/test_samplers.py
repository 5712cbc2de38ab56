"""Our samplers against the diffusers schedulers, given the same model outputs and noise."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from dit_worker.sampling import make_sampler
from dit_worker.sampling.guidance import guided_eps
from dit_worker.sampling.schedule import dit_respaced_timesteps


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """||actual - expected|| / ||expected||: elementwise relative error is meaningless near zero."""
    err = (torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected)).item()
    assert err < tol, f"relative error {err:.3g} >= {tol}"


def dit_forward_with_cfg(out: torch.Tensor, scale: float) -> torch.Tensor:
    """The released DiT code's guidance (models.py forward_with_cfg), written out as the oracle."""
    eps, rest = out[:, :3], out[:, 3:]
    cond, uncond = torch.split(eps, len(eps) // 2, dim=0)
    half = uncond + scale * (cond - uncond)
    return torch.cat([torch.cat([half, half], dim=0), rest], dim=1)


def test_ddpm_learned_range_matches_diffusers_step_by_step() -> None:
    """250 respaced steps, cfg 1.5 on 3 channels: the DiT paper protocol."""
    ref = DDPMScheduler(variance_type="learned_range", timestep_spacing="linspace", clip_sample=False)
    ref.set_timesteps(250)
    ours = make_sampler("ddpm", 250, {}, learned_sigma=True)
    assert ours.timesteps == ref.timesteps.tolist()
    assert ours.stochastic

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g)
    traj_ours, traj_ref = x.clone(), x.clone()
    for i, t in enumerate(ours.timesteps):
        out = torch.randn(6, 8, 8, 8, generator=g)
        reference_output = dit_forward_with_cfg(out, 1.5)[:3]
        eps, var = guided_eps(out, 4, 1.5, 3)
        noise_seed = 10_000 + i
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(noise_seed))

        # diffusers builds the schedule in float32 (cumprod over 1000 steps), DiT in float64: their
        # coefficients differ by up to ~3e-5 relative near t=999, so that is the tolerance.
        # One step from the same state ...
        step_ref = ref.step(reference_output, t, x, generator=torch.Generator().manual_seed(noise_seed)).prev_sample
        step_ours, _ = ours.step(i, x, eps, var, noise, None)
        assert_rel_close(step_ours, step_ref, 3e-5)
        # ... and the whole trajectories, each from its own previous state.
        traj_ref = ref.step(
            reference_output, t, traj_ref, generator=torch.Generator().manual_seed(noise_seed)
        ).prev_sample
        traj_ours, _ = ours.step(i, traj_ours, eps, var, noise, None)
        x = step_ours
    assert_rel_close(traj_ours, traj_ref, 3e-5)


@pytest.mark.parametrize("steps", [1, 2, 25, 50, 100, 250, 1000])
def test_dit_respacing_is_a_subset_in_range(steps: int) -> None:
    ts = dit_respaced_timesteps(1000, steps)
    assert len(ts) == steps and ts == sorted(set(ts)) and ts[0] >= 0 and ts[-1] <= 999
    if steps > 1:
        assert ts[0] == 0 and ts[-1] == 999


CONFIGS = [
    {},  # an original checkpoint: DiT's schedule, each scheduler's own defaults
    {"clip_sample": False, "beta_schedule": "linear", "num_train_timesteps": 1000},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "leading", "steps_offset": 1, "final_sigmas_type": "sigma_min", "solver_type": "heun"},
    {"beta_schedule": "squaredcos_cap_v2", "set_alpha_to_one": False},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "lambda_min_clipped": -5.1},
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize(
    ("name", "reference", "steps"),
    [
        ("ddim", DDIMScheduler, 50),
        ("ddim", DDIMScheduler, 7),
        ("dpm-solver", DPMSolverMultistepScheduler, 25),
        ("dpm-solver", DPMSolverMultistepScheduler, 10),
        ("dpm-solver", DPMSolverMultistepScheduler, 20),
    ],
)
def test_deterministic_samplers_match_from_config(config: dict, name: str, reference: type, steps: int) -> None:
    ref = reference.from_config(config)
    ref.set_timesteps(steps)
    ours = make_sampler(name, steps, config, learned_sigma=True)
    assert ours.timesteps == ref.timesteps.tolist()
    assert not ours.stochastic
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    x_ref, state = x.clone(), None
    for i, t in enumerate(ours.timesteps):
        eps = torch.randn(x.shape, generator=g)
        x, state = ours.step(i, x, eps, None, None, state)
        x_ref = ref.step(eps, t, x_ref).prev_sample
        # Same formulas; only the association of float32 scalar products differs.
        assert_rel_close(x, x_ref, 2e-6)


def test_ddim_with_eta_matches_diffusers() -> None:
    ref = DDIMScheduler.from_config({"clip_sample": False})
    ref.set_timesteps(20)
    ours = make_sampler("ddim", 20, {"clip_sample": False}, learned_sigma=True, eta=0.5)
    assert ours.stochastic
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 8, 8, generator=g)
    x_ref = x.clone()
    for i, t in enumerate(ours.timesteps):
        eps = torch.randn(x.shape, generator=g)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        x, _ = ours.step(i, x, eps, None, noise, None)
        x_ref = ref.step(eps, t, x_ref, eta=0.5, variance_noise=noise).prev_sample
    assert_rel_close(x, x_ref, 2e-6)


@pytest.mark.parametrize(
    ("name", "config", "fragment"),
    [
        ("dpm-solver", {"use_karras_sigmas": True}, "use_karras_sigmas"),
        ("dpm-solver", {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
        ("dpm-solver", {"solver_order": 3}, "solver_order"),
        ("ddim", {"prediction_type": "v_prediction"}, "prediction_type"),
        ("ddim", {"thresholding": True}, "thresholding"),
        ("ddim", {"timestep_spacing": "karras"}, "timestep_spacing"),
        ("ddpm", {"beta_schedule": "sigmoid"}, "beta_schedule"),
        ("euler", {}, "not one of DiT's native samplers"),
    ],
)
def test_unsupported_scheduler_configs_are_refused(name: str, config: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        make_sampler(name, 10, config, learned_sigma=True)


def test_steps_out_of_range_are_refused() -> None:
    for steps in (0, 1001):
        with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
            make_sampler("ddim", steps, {}, learned_sigma=True)
