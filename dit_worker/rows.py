"""What a sample is before any model sees it: its conditioning kind, a batch of rows, the seed range.

Kept free of torch and of the backends, so that what only reads manifests (the driver's planning, a
manifest scan's task processes) starts without loading either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# What a row carries besides its seed: a class (DiT), a prompt (text-to-image) or nothing.
Conditioning = Literal["class", "text", "none"]
MAX_SEED = 2**63  # exclusive; seeds are stored as int64


@dataclass(frozen=True)
class Rows:
    """One batch of samples as a generator takes them: Python lists of the batch only."""

    seeds: list[int]
    class_ids: list[int] | None = None
    prompts: list[str] | None = None
    negative_prompts: list[str | None] | None = None  # None entries: the job's --negative-prompt, else none

    def __len__(self) -> int:
        return len(self.seeds)
