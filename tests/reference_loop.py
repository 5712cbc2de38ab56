"""The sampling loop written out with diffusers' own components: the oracle for the paper protocol
(3-channel guidance, which diffusers' DiTPipeline cannot do) and the fixtures' self-check.

Every sample owns a CPU generator for its initial latent and its step noise (docs/numerics.md);
diffusers' `randn_tensor` with one generator per sample draws exactly those numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def float64_schedule_ddpm():
    """diffusers' learned-range DDPM on DiT's float64 schedule: diffusers builds alphas_cumprod in
    float32, whose cumulative product over 1000 steps is 3e-5 off near t = 999 and would swamp the
    float noise. Its per-step scalars then come from float64; the tensor arithmetic stays float32."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(variance_type="learned_range", timestep_spacing="linspace", clip_sample=False)
    betas = torch.from_numpy(np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    sched.betas, sched.alphas, sched.alphas_cumprod = betas, 1.0 - betas, torch.cumprod(1.0 - betas, dim=0)
    return sched


def reference_latents(
    transformer,
    scheduler,
    classes: Sequence[int],
    seeds: Sequence[int],
    steps: int,
    scale: float,
    channels: int,
) -> torch.Tensor:
    """Latents from diffusers' transformer and scheduler, guiding the first `channels` eps channels.

    The unguided eps channels and the learned-variance channels are the conditional half's, as in
    DiT's `forward_with_cfg`. DDPMScheduler with `learned_range` reads the variance channels itself;
    the other schedulers get the eps channels only, as diffusers' DiTPipeline gives them.
    """
    from diffusers.utils.torch_utils import randn_tensor

    n, c = len(classes), transformer.config.in_channels
    side = transformer.config.sample_size
    null = transformer.config.num_embeds_ada_norm
    scheduler.set_timesteps(steps)
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    x = randn_tensor((n, c, side, side), generator=gens)
    y = torch.tensor([*classes, *[null] * n])
    keeps_variance = getattr(scheduler.config, "variance_type", None) == "learned_range"
    with torch.no_grad():
        for t in scheduler.timesteps:
            if scale > 1:
                out = transformer(torch.cat([x, x]), timestep=t.expand(2 * n), class_labels=y).sample
                cond, uncond = out.chunk(2)
                guided = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
                out = torch.cat([guided, cond[:, channels:]], dim=1)
            else:
                out = transformer(x, timestep=t.expand(n), class_labels=y[:n]).sample
            x = scheduler.step(out if keeps_variance else out[:, :c], t, x, generator=gens).prev_sample
    return x


def reference_decode(vae, latents: torch.Tensor) -> np.ndarray:
    """uint8 [N, H, W, 3] as diffusers' DiTPipeline makes them (output_type "np", times 255, rounded)."""
    with torch.no_grad():
        images = vae.decode(latents / vae.config.scaling_factor).sample
    return ((images / 2 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1).to(torch.uint8).numpy()


# The pixel comparisons allow 1 level; a fixture must let every deliberately wrong input move the
# image by far more (issue 14: with unscaled random weights these moved it by at most 1 level).
PIXEL_TOLERANCE = 1
MIN_MAX_CHANGE = 20 * PIXEL_TOLERANCE
MIN_MEAN_CHANGE = 2.0


def check_model_matters(transformer, vae, scheduler, *, classes: Sequence[int], other_classes: Sequence[int]) -> None:
    """The fixture's proof that its weights, not just the seeds, shape the images: changing the class,
    the guidance scale or the guided channel count changes them by far more than any tolerance."""
    seeds = list(range(len(classes)))

    def images(cls: Sequence[int], scale: float, channels: int) -> np.ndarray:
        latents = reference_latents(transformer, scheduler, cls, seeds, 8, scale, channels)
        return reference_decode(vae, latents).astype(np.int64)

    base = images(classes, 4.0, 4)
    assert base.std() > 20, f"images nearly flat (std {base.std():.1f}): nothing would be compared"
    assert ((base == 0) | (base == 255)).mean() < 0.05, "images saturated: clamping would hide differences"
    changes = {
        "class": images(other_classes, 4.0, 4),
        "guidance scale 4 -> 1.5": images(classes, 1.5, 4),
        "no guidance": images(classes, 1.0, 4),
        "guided channels 4 -> 3": images(classes, 4.0, 3),
    }
    for what, other in changes.items():
        diff = np.abs(other - base)
        assert diff.max() >= MIN_MAX_CHANGE and diff.mean() >= MIN_MEAN_CHANGE, (
            f"the fixture's weights barely react to the {what} (max {diff.max()}, mean {diff.mean():.2f} levels)"
        )
