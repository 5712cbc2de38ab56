"""Same (class, seed), same image: batch composition and order never change a sample (float32, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dit_worker import load_pipeline


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 25), ("dpm-solver", 10), ("ddim", 10)])
def test_sample_is_independent_of_batch(tiny_ckpt: Path, sampler: str, steps: int) -> None:
    pipe = load_pipeline(tiny_ckpt, device="cpu", dtype="float32")
    classes = [2, 879, 207, 360, 0, 999, 5]
    seeds = [11, 12, 13, 14, 15, 16, 2**63 - 1]
    kw = dict(sampler=sampler, steps=steps, cfg_scale=1.5, cfg_channels=3)
    batch = pipe.generate(classes, seeds, batch_size=7, **kw)
    alone = np.stack([pipe.generate([c], [s], **kw)[0] for c, s in zip(classes, seeds, strict=True)])
    order = list(reversed(range(7)))
    shuffled = pipe.generate([classes[i] for i in order], [seeds[i] for i in order], batch_size=3, **kw)
    assert np.array_equal(batch, alone)
    assert np.array_equal(batch, shuffled[order])
    assert len({img.tobytes() for img in batch}) == 7  # different seeds, different images


def test_seed_changes_image(tiny_ckpt: Path) -> None:
    pipe = load_pipeline(tiny_ckpt, device="cpu", dtype="float32")
    a, b = pipe.generate([1, 1], [0, 1], sampler="ddim", steps=5)
    assert not np.array_equal(a, b)
