"""Per-sample noise (docs/numerics.md, noise convention): every draw of a sample comes from its own CPU generator.

An image is then a function of its (class, seed) only: batch composition, shard boundaries, worker
count and device never change which random numbers a sample sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dit_worker.rows import MAX_SEED


class SampleNoise:
    """Each sample's own CPU generator, seeded by its seed: its initial latent and every step's noise
    (docs/numerics.md)."""

    def __init__(self, seeds: Sequence[int], shape: tuple[int, int, int], *, pin_memory: bool = False) -> None:
        bad = [s for s in seeds if not 0 <= s < MAX_SEED]
        if bad:
            raise ValueError(f"seeds must lie in [0, 2**63), got {bad[:5]}")
        self.shape = shape
        self.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        self._pin = pin_memory

    def draw(self) -> torch.Tensor:
        """The next [N, C, H, W] float32 draw, one `randn((C, H, W), generator=g)` per sample."""
        out = torch.empty((len(self.generators), *self.shape), dtype=torch.float32, pin_memory=self._pin)
        for row, g in zip(out, self.generators, strict=True):
            torch.randn(self.shape, generator=g, out=row)
        return out
