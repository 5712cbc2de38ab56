"""Same (class, seed), same sample: batch composition and order never change it (float32, CPU).

At one batch size the latents are equal bit for bit whatever else is in the batch and in which
order. Across batch sizes the CPU kernels round differently (oneDNN and MKL pick other kernels for
other row counts: the adaLN linear on [N, D] and the patch convolution), so the same pipeline run in
float64 shows what remains: float32 batch-vs-alone differences the size of float32-vs-float64
rounding, float64 batch-vs-alone differences at float64 rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dit_worker import load_pipeline
from dit_worker.backends.native.checkpoint import load_checkpoint
from dit_worker.backends.native.pipeline import DiTPipeline
from dit_worker.backends.settings import SamplingSettings

CLASSES = [2, 879, 207, 360, 0, 999, 5]
SEEDS = [11, 12, 13, 14, 15, 16, 2**63 - 1]
# Measured on this CPU (per-sample relative L2 of the latents, tiny fixture, cfg 1.5 on 3 channels):
# float32 batch of 7 vs alone 2.3e-7 (ddpm), 2.7e-7 (ddim), 2.4e-7 (dpm-solver); float32 vs
# float64 2.4e-7..2.7e-7; float64 batch vs alone 4.6e-16. Tolerances: about 4x and 20x those.
FLOAT32_ROUNDING = 1e-6
FLOAT64_ROUNDING = 1e-14


def rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample ||a - b|| / ||b||, in float64."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return torch.linalg.vector_norm(a - b, dim=1) / torch.linalg.vector_norm(b, dim=1)


@pytest.fixture(scope="module")
def pipes(tiny_ckpt: Path) -> tuple[DiTPipeline, DiTPipeline]:
    ckpt = load_checkpoint(tiny_ckpt)
    return DiTPipeline(ckpt, torch.device("cpu"), torch.float32), DiTPipeline(ckpt, torch.device("cpu"), torch.float64)


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 25), ("dpm-solver", 10), ("ddim", 10)])
def test_sample_is_independent_of_batch(pipes, sampler: str, steps: int) -> None:
    p32, p64 = pipes
    settings = SamplingSettings(sampler=sampler, steps=steps, cfg_scale=1.5, cfg_channels=3)
    configured = p32.sampler(settings)
    batch = p32.sample_latents(CLASSES, SEEDS, configured)

    # One batch size: bit for bit, whatever the order and the other samples.
    order = [3, 6, 0, 5, 1, 4, 2]
    shuffled = p32.sample_latents([CLASSES[i] for i in order], [SEEDS[i] for i in order], configured)
    assert torch.equal(shuffled, batch[order])
    others = p32.sample_latents([CLASSES[0], 17, 18, 19, 20, 21, 22], [SEEDS[0], *range(100, 106)], configured)
    assert torch.equal(others[0], batch[0])
    assert torch.equal(p32.sample_latents(CLASSES, SEEDS, configured), batch)  # run to run

    # Other batch sizes: float rounding only, as float64 shows.
    alone = torch.cat([p32.sample_latents([c], [s], configured) for c, s in zip(CLASSES, SEEDS, strict=True)])
    batch64 = p64.sample_latents(CLASSES, SEEDS, configured)
    alone64 = torch.cat([p64.sample_latents([c], [s], configured) for c, s in zip(CLASSES, SEEDS, strict=True)])
    assert rel(alone64, batch64).max() < FLOAT64_ROUNDING
    assert rel(batch, batch64).max() < FLOAT32_ROUNDING and rel(alone, batch64).max() < FLOAT32_ROUNDING
    assert rel(alone, batch).max() < FLOAT32_ROUNDING

    # The comparison sees errors 50x below what the old pixel test could: a guidance scale off by
    # 1e-4 moves every sample by >= 10x the float32 tolerance.
    nudged = p32.sample_latents(CLASSES, SEEDS, p32.sampler(settings.model_copy(update={"cfg_scale": 1.5001})))
    assert rel(nudged, batch).min() > 10 * FLOAT32_ROUNDING

    images, images_alone = p32.decode(batch).numpy(), p32.decode(alone).numpy()
    assert np.array_equal(p32.decode(shuffled).numpy(), images[order])
    assert np.abs(images.astype(int) - images_alone.astype(int)).max() <= 1  # a rounding flip at most
    assert len({img.tobytes() for img in images}) == 7  # different seeds, different images


def test_seed_changes_image(tiny_ckpt: Path) -> None:
    pipe = load_pipeline(tiny_ckpt, device="cpu", dtype="float32")
    a, b = pipe.generate([1, 1], [0, 1], sampler="ddim", steps=5)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 2
