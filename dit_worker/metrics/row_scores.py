"""`jobs.generate --score clip[=MODEL]`: each image's CLIP score against its prompt, computed on the
worker from the generated batch (still on the device) and written as the `clip_score` column of the
shard's metadata part (and its webdataset json / Parquet data part); `--score-embeddings` adds the
image embedding as `clip_embedding`, a fixed-size float32 list, for dedup and search.

Only prompts are scored: the driver refuses `--score` for class-conditional and unconditional models
(scoring against a class name would be another metric, with its own prompt template to choose).
The CLIP model is loaded once per worker; its identity is part of the job's fingerprint, so a
resumed job never mixes parts scored by one model, another, or none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dit_worker.metrics.clip_score import DEFAULT_CLIP, ClipEmbedder, clip_scores
from dit_worker.metrics.hf_models import resolve_hf_model

SCORE_COLUMN = "clip_score"
EMBEDDING_COLUMN = "clip_embedding"
SCORE_FLAG = "--score"


def score_model(value: str) -> str:
    """The CLIP model of a `--score` value: `clip` (the default model) or `clip=DIR_OR_HUB_ID`."""
    kind, _, model = value.partition("=")
    if kind != "clip" or ("=" in value and not model):
        raise ValueError(f"{SCORE_FLAG} {value!r}: expected clip or clip=MODEL (a CLIP directory or hub id)")
    return model or DEFAULT_CLIP


def score_record(value: str | None, embeddings: bool) -> dict[str, Any] | None:
    """What the fingerprint records of --score: the CLIP model by the sha256 of its weights (checked
    here, on the driver, before any worker loads it)."""
    if value is None:
        return None
    model = resolve_hf_model(score_model(value), flag=SCORE_FLAG, model_type="clip")
    return {"column": SCORE_COLUMN, "clip_model_id": model.id, "embeddings": embeddings}


class ClipRowScorer:
    """One shard's scores, batch by batch; `columns()` gives the metadata columns, in sample order."""

    def __init__(self, clip: ClipEmbedder, embeddings: bool) -> None:
        self.clip, self.embeddings = clip, embeddings
        self._scores: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []

    def add(self, prompts: Sequence[str | None], images: np.ndarray | torch.Tensor) -> None:
        """images: uint8 [N, H, W, 3]; prompts: row i's prompt (every row has one: the driver checked)."""
        features = self.clip.images(images)
        self._scores.append(clip_scores(features, self.clip.texts([p or "" for p in prompts])).astype(np.float32))
        if self.embeddings:
            self._rows.append(features.astype(np.float32))

    def columns(self) -> dict[str, pa.Array]:
        out: dict[str, pa.Array] = {SCORE_COLUMN: pa.array(np.concatenate(self._scores), pa.float32())}
        if self.embeddings:
            rows = np.concatenate(self._rows)
            out[EMBEDDING_COLUMN] = pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), rows.shape[1])
        return out


def clip_row_scorers(value: str, embeddings: bool, device: torch.device | str) -> Callable[[int], list[ClipRowScorer]]:
    """Load CLIP once per worker; each shard gets its own scorer."""
    model = resolve_hf_model(score_model(value), flag=SCORE_FLAG, model_type="clip")
    clip = ClipEmbedder(model, device)
    return lambda shard: [ClipRowScorer(clip, embeddings)]
