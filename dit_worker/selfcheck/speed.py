"""Check 4: speed. DiT sampling (DDIM 50, cfg 1.5, random weights) over a batch sweep and `auto`: images/s,
TFLOP/s from the analytic FLOP count, MFU against the datasheet peak (none on CPU), diffusers' pipeline on
the same weights and dtype alternating with ours; and the job's end-to-end rate (encode + write) beside
pure sampling. Figures, not bounds: every line states what it measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dit_worker.backends.native.pipeline import load_pipeline
from dit_worker.backends.settings import SamplingSettings
from dit_worker.benchmarks.sampling import (
    Timer,
    measure_end_to_end,
    measure_ours,
    measure_reference,
    peak_tflops,
    reference_pipeline,
    summarise,
)
from dit_worker.checkpoints.convert import random_checkpoint_dir
from dit_worker.selfcheck.context import Context
from dit_worker.selfcheck.lines import CheckLine

NAME = "speed"
SETTINGS = SamplingSettings(sampler="ddim", steps=50, cfg_scale=1.5, cfg_channels=4)  # 4: as diffusers guides
# (batch sizes, timed repeats) per device; the tiny model always, DiT-XL/2 at 256 unless --quick.
SWEEP = {"cpu": ((1, 4), 2), "cuda": ((32, 128), 2)}
LARGE_SWEEP = {"cpu": ((1,), 1), "cuda": ((64,), 2)}  # and auto: each batch shape is compiled once


def sweep_lines(ctx: Context, label: str, model: Path, sizes: tuple[int, ...], repeats: int) -> list[CheckLine]:
    pipe = load_pipeline(model, device=ctx.device, dtype=ctx.dtype)
    if ctx.compile:
        pipe.compile()
    ref = reference_pipeline(model, SETTINGS.sampler, ctx.device, ctx.dtype)
    timer, peak = Timer(ctx.device), peak_tflops(ctx.device, ctx.dtype, None)
    auto = pipe.max_batch_size(SETTINGS)
    lines = []
    batches = [*sizes, auto] if ctx.device.type == "cuda" or auto not in sizes else list(sizes)
    for i, batch in enumerate(batches):
        is_auto = i == len(sizes)
        measure_ours(pipe, settings=SETTINGS, batch=batch, timer=timer)  # warm-up (compiles this shape)
        with_ref = not is_auto  # auto fills the device for ours; diffusers' pipeline may not fit it
        if with_ref:
            measure_reference(ref, SETTINGS, batch, timer)
        ours, theirs = [], []
        for _ in range(repeats):  # alternate, so drift in clocks or load hits both alike
            ours.append(measure_ours(pipe, SETTINGS, batch, timer))
            if with_ref:
                theirs.append(measure_reference(ref, SETTINGS, batch, timer))
        o = summarise("dit_worker", ours, pipe, SETTINGS, batch, peak)
        note = f"{o['tflops']:.3g} TFLOP/s, MFU " + (f"{o['mfu']:.1%}" if o["mfu"] is not None else "n/a (no peak)")
        extra: dict[str, Any] = {"batch_size": batch, "auto": is_auto, "ours": o}
        if with_ref:
            t = summarise("diffusers", theirs, pipe, SETTINGS, batch, peak)
            note += f"; diffusers {t['images_per_s']:.3g} images/s, ours {o['images_per_s'] / t['images_per_s']:.2f}x"
            extra["diffusers"] = t
        name = (
            f"{label} {ctx.dtype_name}{' compiled' if ctx.compile else ''}, batch {batch}{' (auto)' if is_auto else ''}"
        )
        lines.append(
            CheckLine(
                check=NAME,
                name=name,
                value=round(o["images_per_s"], 3),
                unit="images/s",
                must=False,
                note=note,
                extra=extra,
            )
        )
    e2e = measure_end_to_end(pipe, SETTINGS, max(sizes), str(ctx.work / "e2e" / label.replace("/", "-")), 4, timer)
    lines.append(
        CheckLine(
            check=NAME,
            name=f"{label}: job end to end (png, written) vs sampling only",
            value=round(e2e["job_over_sampling"], 3),
            unit="x sampling's rate",
            must=False,
            note=f"{e2e['job_images_per_s']:.3g} vs {e2e['sampling_only_images_per_s']:.3g} images/s",
            extra=e2e,
        )
    )
    del pipe, ref
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return lines


def check_speed(ctx: Context) -> list[CheckLine]:
    kind = ctx.device.type
    lines = sweep_lines(ctx, "tiny DiT", ctx.dit, *SWEEP[kind])
    if not ctx.config.quick:
        xl = random_checkpoint_dir("DiT-XL/2", ctx.work / "models" / "DiT-XL-2-256", image_size=256)
        lines += sweep_lines(ctx, "DiT-XL/2 256", xl, *LARGE_SWEEP[kind])
    return lines
