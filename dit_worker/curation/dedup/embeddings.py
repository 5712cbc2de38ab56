"""A shard's unit image embeddings and bucket keys: from its stored `clip_embedding` column, or computed
from its stored images by transformers' CLIP (`ClipEmbedder`), one model load per task process."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from dit_worker.curation.dedup.config import Within
from dit_worker.curation.dedup.partition import prompt_key
from dit_worker.metrics.clip_score import ClipEmbedder
from dit_worker.metrics.hf_models import HfModel
from dit_worker.metrics.row_scores import EMBEDDING_COLUMN
from dit_worker.output.reader import OutputSet, OutputSetError, batched

_LOADED: dict[str, ClipEmbedder] = {}  # model id -> the model, kept for the process's next tasks
BATCH = 64


@dataclass(frozen=True)
class EmbeddingSource:
    """Where the vectors come from: the stored column (model None) or this CLIP model."""

    model: HfModel | None
    dim: int

    @property
    def description(self) -> str:
        return f"column {EMBEDDING_COLUMN}" if self.model is None else self.model.id


def _clip(model: HfModel) -> ClipEmbedder:
    if model.id not in _LOADED:
        _LOADED[model.id] = ClipEmbedder(model, "cuda" if torch.cuda.is_available() else "cpu", batch_size=BATCH)
    return _LOADED[model.id]


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 in float32 (a zero row stays zero: it links to nothing)."""
    x = np.asarray(vectors, np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def bucket_keys(table: pa.Table, within: Within, where: str) -> np.ndarray:
    """int64 [n, 2] bucket key of each row of `table` (sorted by sample_id)."""
    n = table.num_rows
    if within == "set":
        return np.zeros((n, 2), np.int64)
    column = "prompt" if within == "prompt" else "class_id"
    values = table.column(column) if column in table.column_names else pa.nulls(n)
    if values.null_count:
        raise OutputSetError(f"{where}: --within {within}: {values.null_count} row(s) without a {column}")
    if within == "class":
        return np.stack([values.to_numpy().astype(np.int64), np.zeros(n, np.int64)], 1)
    return np.asarray([prompt_key(p) for p in values.to_pylist()], np.int64).reshape(n, 2)


def shard_embeddings(
    output: OutputSet, index: int, source: EmbeddingSource, within: Within
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample_ids int64 [n], keys int64 [n, 2], unit float32 [n, dim]) of shard `index`, by sample_id."""
    table = OutputSet.read_part_table(output.storage, index)
    table = table.take(pc.sort_indices(table, [("sample_id", "ascending")]))
    where = output.storage.child(f"metadata/part-{index:05d}.parquet")
    keys = bucket_keys(table, within, where)
    ids = table.column("sample_id").to_numpy().astype(np.int64)
    if source.model is None:
        if EMBEDDING_COLUMN not in table.column_names:
            raise OutputSetError(f"{where}: no {EMBEDDING_COLUMN} column (the set's first part has one)")
        column = table.column(EMBEDDING_COLUMN).combine_chunks()
        if column.null_count or column.type.list_size != source.dim:
            raise OutputSetError(f"{where}: {EMBEDDING_COLUMN} is not {source.dim} floats on every row")
        vectors = column.flatten().to_numpy().reshape(-1, source.dim)
    else:
        shard = OutputSet.shard_of(index, table, where)
        clip = _clip(source.model)
        parts = [clip.images(images) for _, _, images in batched(output.iter_samples([shard]), BATCH)]
        vectors = np.concatenate(parts) if parts else np.zeros((0, source.dim), np.float32)
    return ids, keys, unit(vectors)
