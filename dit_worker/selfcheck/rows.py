"""Check 2: the per-row contract on this device. A row's image is the same alone, in a batch of 7 and with
the batch reordered, for the native path and one diffusers family (README, "Numerics")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dit_worker.backends import GenerationRequest, Generator, Rows, inspect_model, load_generator
from dit_worker.backends.settings import SamplingSettings
from dit_worker.checkpoints.tiny_pipelines import save_pixart_sigma
from dit_worker.selfcheck.context import Context, max_diff
from dit_worker.selfcheck.lines import CheckLine, at_most

NAME = "rows"
ORDER = [3, 0, 6, 1, 5, 2, 4]  # the batch of 7, reordered
PROMPTS = [
    "a red cat near the sea",
    "a blue house under the sky",
    "the green tree",
    "a photo of a dog",
    "a watercolor of a boat over the river",
    "sunset over the mountain",
    "a portrait of a bird",
]


def take(rows: Rows, index: list[int]) -> Rows:
    pick = lambda column: None if column is None else [column[i] for i in index]  # noqa: E731
    return Rows(seeds=pick(rows.seeds), class_ids=pick(rows.class_ids), prompts=pick(rows.prompts))


def row_lines(what: str, gen: Generator, rows: Rows, tolerance: int) -> list[CheckLine]:
    """Alone vs in the batch of 7, and the batch reordered. `tolerance` is the backend's contract: 0 for
    the native path at one batch shape (across batch sizes its kernels may round differently: stated, not
    required), 1 level for a diffusers pipeline whatever the batch (docs/backends.md)."""
    batch = gen.generate(rows).cpu().numpy()
    alone = np.concatenate([gen.generate(take(rows, [i])).cpu().numpy() for i in range(len(rows))])
    reordered = gen.generate(take(rows, ORDER)).cpu().numpy()
    moved = max_diff(alone, batch)
    across = (
        CheckLine(
            check=NAME,
            name=f"{what}: alone vs in a batch of 7",
            value=moved,
            unit="levels",
            bound="0",
            holds=moved == 0,
            must=False,
            note="bit-exact" if moved == 0 else "rows move with the batch size",
        )
        if tolerance == 0
        else at_most(NAME, f"{what}: alone vs in a batch of 7", moved, tolerance, "levels")
    )
    return [
        across,
        at_most(
            NAME,
            f"{what}: batch of 7 reordered",
            max_diff(reordered, batch[ORDER]),
            tolerance,
            "levels",
            note="same batch shape",
        ),
    ]


def check_rows(ctx: Context) -> list[CheckLine]:
    dtype = ctx.dtype_name
    settings = SamplingSettings(sampler="ddim", steps=10, cfg_scale=4.0, cfg_channels=3)
    native = load_generator(str(ctx.dit), None, str(ctx.device), dtype, settings)
    if ctx.compile:
        native.compile()
    lines = row_lines(f"DiT native {dtype}", native, Rows(seeds=list(range(7)), class_ids=[1, 2, 3, 4, 999, 0, 7]), 0)
    model = str(pixart_dir(ctx))
    request = GenerationRequest(
        sampling=SamplingSettings(steps=4, cfg_scale=3.0), height=32, width=32, max_sequence_length=16
    )
    spec = inspect_model(model, None)
    pixart = load_generator(model, None, str(ctx.device), dtype, spec.resolve(request))
    lines += row_lines(f"PixArt-Σ {dtype}", pixart, Rows(seeds=list(range(20, 27)), prompts=PROMPTS), 1)
    return lines


def pixart_dir(ctx: Context) -> Path:
    path = ctx.work / "models" / "pixart-sigma"
    return path if path.exists() else save_pixart_sigma(path)
