"""Check 5: each diffusers family installed here through the job (`run_job`, local) at a tiny size, every
row within 1 level of the family's pipeline called alone for that row on the same device (docs/backends.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dit_worker.backends.diffusers.resolve import diffusers_module
from dit_worker.backends.settings import SamplingSettings
from dit_worker.checkpoints.tiny_pipelines import FAMILY_BUILDERS
from dit_worker.driver.config import JobConfig
from dit_worker.output.reader import OutputSet
from dit_worker.selfcheck.context import Context, max_diff
from dit_worker.selfcheck.lines import CheckLine, at_least, at_most

NAME = "families"
ROWS = [
    {"sample_id": 0, "prompt": "a red cat at night", "seed": 5},
    {"sample_id": 1, "prompt": "a blue house over the sea", "seed": 5},
    {"sample_id": 2, "prompt": "a watercolor painting of a yellow boat near the river", "seed": 7},
]
# Non-default guidance and size per family, so a setting dropped on the way shows.
CALLS: dict[str, dict[str, Any]] = {
    "PixArtSigmaPipeline": {"guidance_scale": 6.0, "height": 32, "width": 48, "max_sequence_length": 16},
    "StableDiffusion3Pipeline": {"guidance_scale": 5.0, "height": 48, "width": 64, "max_sequence_length": 24},
    "FluxPipeline": {"guidance_scale": 6.0, "height": 48, "width": 64, "max_sequence_length": 24},
    "SanaPipeline": {"guidance_scale": 3.0, "height": 64, "width": 32, "max_sequence_length": 20},
    "StableDiffusionXLPipeline": {"guidance_scale": 6.5, "height": 24, "width": 32},
}
STEPS = 3
TOLERANCE = 1  # uint8 levels: the contract's 1/255
SENSITIVITY = 8.0  # mean levels another prompt's image must differ by (the comparison can fail)


def family_job(ctx: Context, cls: str, model: Path, manifest: Path) -> JobConfig:
    call = CALLS[cls]
    return JobConfig(
        model=str(model),
        out=str(ctx.work / "jobs" / cls),
        local=True,
        device=ctx.device.type,
        dtype=ctx.dtype_name,
        manifest=str(manifest),
        sampling=SamplingSettings(steps=STEPS, cfg_scale=call["guidance_scale"]),
        height=call["height"],
        width=call["width"],
        max_sequence_length=call.get("max_sequence_length"),
        batch_size=len(ROWS),
        shard_size=len(ROWS),
    )


def alone(pipe: Any, row: dict[str, Any], call: dict[str, Any]) -> np.ndarray:
    """The pipeline called for this row only, with the row's own CPU generator."""
    gen = torch.Generator("cpu").manual_seed(row["seed"])
    out = pipe(prompt=row["prompt"], generator=gen, num_inference_steps=STEPS, output_type="np", **call).images[0]
    return np.round(out * 255).astype(np.uint8)


def check_family(ctx: Context, cls: str, manifest: Path) -> list[CheckLine]:
    model = FAMILY_BUILDERS[cls](ctx.work / "models" / cls)
    config = family_job(ctx, cls, model, manifest)
    ctx.run_job(cls, config)
    ours = {s.sample_id: s.image for s in OutputSet.open(config.out).iter_samples()}
    pipe = getattr(diffusers_module(), cls).from_pretrained(model, torch_dtype=ctx.dtype).to(ctx.device)
    pipe.set_progress_bar_config(disable=True)
    expected = [alone(pipe, row, CALLS[cls]) for row in ROWS]
    worst = max(max_diff(ours[row["sample_id"]], ref) for row, ref in zip(ROWS, expected, strict=True))
    other = alone(pipe, {**ROWS[0], "prompt": ROWS[2]["prompt"]}, CALLS[cls])
    missed = float(np.abs(ours[0].astype(np.float64) - other).mean())
    return [
        at_most(
            NAME,
            f"{cls}: job vs pipeline alone, per row",
            worst,
            TOLERANCE,
            "levels",
            note=f"{len(ROWS)} rows, {ctx.dtype_name}",
        ),
        at_least(NAME, f"{cls}: vs another prompt's image (must miss)", missed, SENSITIVITY, "levels mean"),
    ]


def check_families(ctx: Context) -> list[CheckLine]:
    manifest = ctx.work / "families.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    lines = []
    for cls in FAMILY_BUILDERS:
        if not hasattr(diffusers_module(), cls):
            lines.append(CheckLine(check=NAME, name=f"{cls}: not in this diffusers", holds=None, must=False))
            continue
        lines += check_family(ctx, cls, manifest)
    return lines
