"""Our samplers against the diffusers schedulers, given the same model outputs and noise."""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from reference_loop import float64_schedule_ddpm

from dit_worker.sampling import make_sampler
from dit_worker.sampling.guidance import guided_eps
from dit_worker.sampling.schedule import dit_respaced_timesteps

# Measured relative L2 errors against diffusers on random inputs (this CPU): ddpm step 7.9e-8 (with
# DiT's float64 schedule in diffusers' formulas; diffusers' own float32 cumprod is 1e-5 off), its
# per-step std 0 (bit for bit; STD_TOL allows float32 rounding, 8x its epsilon), its 250-step
# trajectory 5.5e-7; ddim 0 (bit for bit), dpm-solver up to 7.9e-8. Tolerances: 4-6x those.
DDPM_TOL = 5e-7
TRAJECTORY_TOL = 2e-6
STD_TOL = 1e-6
DETERMINISTIC_TOL = 3e-7


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||: elementwise relative error is meaningless near zero."""
    diff = torch.linalg.vector_norm(actual.double() - expected.double())
    return (diff / torch.linalg.vector_norm(expected.double())).item()


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    err = rel_err(actual, expected)
    assert err < tol, f"relative error {err:.3g} >= {tol}"


def dit_forward_with_cfg(out: torch.Tensor, scale: float) -> torch.Tensor:
    """The released DiT code's guidance (models.py forward_with_cfg), written out as the oracle."""
    eps, rest = out[:, :3], out[:, 3:]
    cond, uncond = torch.split(eps, len(eps) // 2, dim=0)
    half = uncond + scale * (cond - uncond)
    return torch.cat([torch.cat([half, half], dim=0), rest], dim=1)


def test_ddpm_learned_range_matches_diffusers_step_by_step() -> None:
    """250 respaced steps, cfg 1.5 on 3 channels: the DiT paper protocol."""
    ref = float64_schedule_ddpm()
    ref.set_timesteps(250)
    ours = make_sampler("ddpm", 250, {}, learned_sigma=True)
    assert ours.timesteps == ref.timesteps.tolist()
    assert ours.stochastic

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g)
    traj_ours, traj_ref, worst_step = x.clone(), x.clone(), 0.0
    for i, t in enumerate(ours.timesteps):
        out = torch.randn(6, 8, 8, 8, generator=g)
        reference_output = dit_forward_with_cfg(out, 1.5)[:3]
        eps, var = guided_eps(out, 4, 1.5, 3)
        noise_seed = 10_000 + i
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(noise_seed))
        # One step from the same state ...
        step_ref = ref.step(reference_output, t, x, generator=torch.Generator().manual_seed(noise_seed)).prev_sample
        step_ours, _ = ours.step(i, x, eps, var, noise, None)
        worst_step = max(worst_step, rel_err(step_ours, step_ref))
        # ... and the whole trajectories, each from its own previous state.
        traj_ref = ref.step(
            reference_output, t, traj_ref, generator=torch.Generator().manual_seed(noise_seed)
        ).prev_sample
        traj_ours, _ = ours.step(i, traj_ours, eps, var, noise, None)
        x = step_ours
    assert worst_step < DDPM_TOL
    assert_rel_close(traj_ours, traj_ref, TRAJECTORY_TOL)


def test_ddpm_variance_per_step_equals_learned_range_formula() -> None:
    """The std of every step against diffusers' learned-range `_get_variance` (Improved DDPM eq. 15):
    stepping x = 0, eps = 0 with unit noise returns the std itself, with no cancellation."""
    ref = float64_schedule_ddpm()
    ref.set_timesteps(250)
    ours = make_sampler("ddpm", 250, {}, learned_sigma=True)
    g = torch.Generator().manual_seed(3)
    zero = torch.zeros(2, 4, 8, 8)
    worst, zeroed, fixed = 0.0, 0.0, 0.0
    for i, t in enumerate(ours.timesteps[:-1]):
        var = torch.rand(zero.shape, generator=g) * 2 - 1  # the learned range's [-1, 1]
        std, _ = ours.step(i, zero, zero, var, torch.ones_like(zero), None)
        expected = torch.exp(0.5 * ref._get_variance(t, predicted_variance=var))
        worst = max(worst, rel_err(std, expected))
        # What a broken variance would give: the channels ignored (0 = midpoint), or fixed-large.
        zeroed = max(zeroed, rel_err(torch.exp(0.5 * ref._get_variance(t, predicted_variance=0 * var)), expected))
        fixed = max(fixed, rel_err(ref._get_variance(t, variance_type="fixed_large") ** 0.5 * (1 + 0 * var), expected))
    assert worst < STD_TOL
    # The margin: a broken variance misses by 100x the tolerance (measured 0.27 with zeroed channels).
    assert zeroed > 100 * STD_TOL and fixed > 100 * STD_TOL
    last, _ = ours.step(len(ours) - 1, zero, zero, torch.rand(zero.shape, generator=g), torch.ones_like(zero), None)
    assert torch.equal(last, zero)  # t = 0: no noise, as DiT masks it out


def dit_respacing_oracle(num_train_timesteps: int, steps: int) -> list[int]:
    """DiT's `space_timesteps(T, "N")` as it defines it: a float cursor advanced by (T - 1) / (N - 1)
    N - 1 times, each position rounded with Python's round() (half to even)."""
    stride = (num_train_timesteps - 1) / (steps - 1) if steps > 1 else 1.0
    return sorted({round(cursor) for cursor in itertools.accumulate([stride] * (steps - 1), initial=0.0)})


def test_dit_respacing_is_exact_for_every_step_count() -> None:
    for steps in range(1, 1001):
        assert dit_respaced_timesteps(1000, steps) == dit_respacing_oracle(1000, steps), steps
    # Where DiT's respacing and diffusers' linspace agree, ours equals diffusers' list; they part
    # at rounding ties (21, 999 steps, 278 counts in all): ddpm follows DiT there.
    ref = DDPMScheduler(timestep_spacing="linspace")
    for steps in (1, 2, 25, 50, 100, 250, 1000):
        ref.set_timesteps(steps)
        assert make_sampler("ddpm", steps, {}, learned_sigma=True).timesteps == ref.timesteps.tolist(), steps
    for steps in (21, 999):
        ref.set_timesteps(steps)
        assert make_sampler("ddpm", steps, {}, learned_sigma=True).timesteps != ref.timesteps.tolist(), steps


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize(("name", "reference"), [("ddim", DDIMScheduler), ("dpm-solver", DPMSolverMultistepScheduler)])
def test_timesteps_equal_set_timesteps_exactly(name: str, reference: type, spacing: str) -> None:
    for offset in (0, 1):
        config = {"timestep_spacing": spacing, "steps_offset": offset}
        for steps in (1, 2, 3, 7, 10, 25, 50, 99, 100, 250, 333, 998, 999, 1000):
            ref = reference.from_config(config)
            ref.set_timesteps(steps)
            expected = ref.timesteps.tolist()
            if max(expected) >= 1000:  # diffusers itself would index past its schedule
                with pytest.raises(ValueError, match="beyond the schedule"):
                    make_sampler(name, steps, config, learned_sigma=True)
                continue
            assert make_sampler(name, steps, config, learned_sigma=True).timesteps == expected, (steps, offset)


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
    ref, nudged = reference.from_config(config), reference.from_config(config)
    ref.set_timesteps(steps)
    nudged.set_timesteps(steps)
    ours = make_sampler(name, steps, config, learned_sigma=True)
    assert ours.timesteps == ref.timesteps.tolist()
    assert not ours.stochastic
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    x_ref, x_nudged, state = x.clone(), x.clone(), None
    worst, miss = 0.0, 0.0
    for i, t in enumerate(ours.timesteps):
        eps = torch.randn(x.shape, generator=g)
        x, state = ours.step(i, x, eps, None, None, state)
        x_ref = ref.step(eps, t, x_ref).prev_sample
        # The wrong input: eps 0.1% off at every step, as a coefficient 0.1% off would make it.
        x_nudged = nudged.step(eps * 1.001, t, x_nudged).prev_sample
        worst, miss = max(worst, rel_err(x, x_ref)), max(miss, rel_err(x_nudged, x_ref))
    assert worst < DETERMINISTIC_TOL
    assert miss > 10 * DETERMINISTIC_TOL


def test_ddim_with_eta_matches_diffusers() -> None:
    ref, other = DDIMScheduler.from_config({"clip_sample": False}), DDIMScheduler.from_config({"clip_sample": False})
    ref.set_timesteps(20)
    other.set_timesteps(20)
    ours = make_sampler("ddim", 20, {"clip_sample": False}, learned_sigma=True, eta=0.5)
    assert ours.stochastic
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 8, 8, generator=g)
    x_ref, x_other = x.clone(), x.clone()
    for i, t in enumerate(ours.timesteps):
        eps = torch.randn(x.shape, generator=g)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        x, _ = ours.step(i, x, eps, None, noise, None)
        x_ref = ref.step(eps, t, x_ref, eta=0.5, variance_noise=noise).prev_sample
        x_other = other.step(eps, t, x_other, eta=0.45, variance_noise=noise).prev_sample
    assert_rel_close(x, x_ref, DETERMINISTIC_TOL)
    assert rel_err(x_other, x_ref) > 10 * DETERMINISTIC_TOL  # eta 0.45 instead of 0.5


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
