"""Check 1: the native DiT at the device's default dtype and compile setting equals eager float32 on the
same weights, and eager float32 equals diffusers' `DiTPipeline` on the same files."""

from __future__ import annotations

import numpy as np
import torch

from dit_worker.backends.native.pipeline import DiTPipeline, load_pipeline
from dit_worker.backends.settings import SamplingSettings
from dit_worker.benchmarks.sampling import reference_pipeline
from dit_worker.selfcheck.context import Context, max_diff, psnr
from dit_worker.selfcheck.lines import CheckLine, at_least, at_most

NAME = "fast-path"
# DDIM with guidance on all 4 channels, as diffusers' DiTPipeline guides.
SETTINGS = SamplingSettings(sampler="ddim", steps=25, cfg_scale=1.5, cfg_channels=4)
CLASSES, SEEDS = [2, 879, 207, 5, 11, 42, 999], list(range(10, 17))
# Image PSNR each dtype must reach against eager float32. Measured on CPU (tiny DiT, 25 DDIM steps):
# float32 identical, bfloat16 55 dB, float16 64 dB; another class set 18 dB.
PSNR_BOUND_DB = {"float32": 45.0, "bfloat16": 35.0, "float16": 40.0}
# float32 eager vs diffusers' DiTPipeline: with its own timestep frequencies (/127) 56 dB on CPU, with DiT's
# (/128) 91 dB (one pixel 1 level off); an attention without its 1/sqrt(d) scale gives 42 dB on both.
DIFFUSERS_BOUND_DB = 48.0
PATCHED_BOUND_DB = 60.0
WRONG_INPUT_BOUND_DB = 25.0  # the same measure on other classes must fall below this


def images(pipe: DiTPipeline, classes: list[int]) -> np.ndarray:
    return pipe.generate_batch(classes, SEEDS, pipe.sampler(SETTINGS)).cpu().numpy()


def diffusers_images(pipe, classes: list[int]) -> np.ndarray:
    gens = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    out = pipe(
        class_labels=classes,
        guidance_scale=SETTINGS.cfg_scale,
        generator=gens,
        num_inference_steps=SETTINGS.steps,
        output_type="np",
    ).images
    return np.round(out * 255).astype(np.uint8)  # what its PIL output holds: round(255 * x)


def check_fast_path(ctx: Context) -> list[CheckLine]:
    eager = load_pipeline(ctx.dit, device=ctx.device, dtype="float32")
    expected = images(eager, CLASSES)
    fast = load_pipeline(ctx.dit, device=ctx.device, dtype=ctx.dtype)
    if ctx.compile:
        fast.compile()
    got = images(fast, CLASSES)
    how = f"{ctx.dtype_name} {'compiled' if ctx.compile else 'eager'}"
    lines = [
        at_least(
            NAME,
            f"fast path ({how}: this device's default) vs float32 eager",
            psnr(got, expected),
            PSNR_BOUND_DB[ctx.dtype_name],
            "dB PSNR",
            note=f"max {max_diff(got, expected)} levels, {len(SEEDS)} images",
        ),
        at_most(
            NAME,
            "float32 eager vs other classes (must miss)",
            psnr(expected, images(eager, [(c + 1) % 1000 for c in CLASSES])) or 0.0,
            WRONG_INPUT_BOUND_DB,
            "dB PSNR",
        ),
    ]
    reference = reference_pipeline(ctx.dit, "ddim", ctx.device, torch.float32)
    theirs = diffusers_images(reference, CLASSES)
    lines.append(
        at_least(
            NAME,
            "float32 eager vs diffusers DiTPipeline",
            psnr(expected, theirs),
            DIFFUSERS_BOUND_DB,
            "dB PSNR",
            note=f"max {max_diff(expected, theirs)} levels; diffusers' own numerics",
        )
    )
    for block in reference.transformer.transformer_blocks:  # DiT's frequencies exp(-ln(1e4) i/128), not /127
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    theirs = diffusers_images(reference, CLASSES)
    lines.append(
        at_least(
            NAME,
            "float32 eager vs diffusers with DiT's timestep frequencies",
            psnr(expected, theirs),
            PATCHED_BOUND_DB,
            "dB PSNR",
            note=f"max {max_diff(expected, theirs)} levels; docs/numerics.md",
        )
    )
    return lines
