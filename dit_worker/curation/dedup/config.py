"""`python -m jobs.dedup`'s options, validated once at the edge."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Within = Literal["prompt", "class", "set"]
# Measured (tests/test_dedup.py, README "Near-duplicates"): with the tests' tiny CLIP (random towers, image
# projection calibrated on other images), planted pairs (the same image, a JPEG re-encode at quality 75, a
# 2-pixel shift, mild noise) at cosine >= 0.959 and distinct smooth images <= 0.865. Not measured on a
# trained CLIP (no weights can be fetched here): 0.95 is where its near-duplicates are commonly cut.
DEFAULT_THRESHOLD = 0.95


class DedupConfig(BaseModel):
    """`python -m jobs.dedup`'s options (None: the default the set decides, in `run_dedup`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out: str = Field(min_length=1)
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0.0, le=1.0)
    within: Within | None = None  # None: prompt for text sets, class for class sets, else set
    clip_model: str | None = None  # None: the stored clip_embedding column, else DEFAULT_CLIP
    s3_endpoint: str | None = None
    ray: bool = False
    # The Python API's knobs (not flags): cells of a --within set run (None: from the rows), rows per
    # partition (a reduce task's memory), source shards per run (a map task's).
    cells: int | None = Field(None, ge=1)
    partition_rows: int = Field(250_000, ge=1)
    runs: int = Field(1024, ge=1)  # at most this many runs: shards per run = ceil(shards / runs)
    workers: int | None = Field(None, ge=1)  # task processes without --ray (None: one per core; 1: in the driver)
