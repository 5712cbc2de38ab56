"""Per-shard metadata parts (docs/output.md): one Parquet file per shard, one row per sample."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("seed", pa.int64()),
        ("image_key", pa.string()),  # relative to OUT; webdataset: "<tar key>#<member name>"
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("sha256", pa.string()),  # of the stored image bytes (png, jpeg or webp)
        ("image_bytes", pa.int64()),  # their size: resume checks it against a listing, without reading images
        ("sampler", pa.string()),
        ("steps", pa.int32()),
        ("cfg_scale", pa.float32()),
        ("cfg_channels", pa.int32()),
        ("shard", pa.int32()),
        # Text-to-image rows (null elsewhere); negative_prompt is null where guidance uses none.
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
    ]
)


# Names a manifest's own columns cannot take: the columns above, the image column of --format parquet,
# and --score clip's and aesthetic's (dit_worker.metrics.row_scores; a classifier's NAME columns are
# refused against these too). Any other manifest column is carried into every row's metadata as it
# is (docs/manifests.md, "Your own columns").
RESERVED_COLUMNS = frozenset([*SCHEMA.names, "image", "clip_score", "clip_embedding", "aesthetic"])


class RowSettings(Protocol):
    """The settings every row records: DiT's SamplingSettings, or a backend's RowColumns (cfg_scale
    None for a model without guidance, cfg_channels None outside DiT)."""

    @property
    def sampler(self) -> str: ...
    @property
    def steps(self) -> int: ...
    @property
    def cfg_scale(self) -> float | None: ...
    @property
    def cfg_channels(self) -> int | None: ...


def shard_table(
    shard: int,
    sample_id: np.ndarray,
    class_id: np.ndarray | None,
    seed: np.ndarray,
    class_names: Sequence[str] | None,
    image_keys: Sequence[str],
    sha256: Sequence[str],
    image_bytes: Sequence[int],
    image_size: int | tuple[int, int],
    settings: RowSettings,
    *,
    prompt: pa.Array | None = None,
    negative_prompt: pa.Array | None = None,
) -> pa.Table:
    """One row per sample; class columns are null for rows without a class, prompt columns for rows
    without a prompt. `image_size` is a side or (height, width)."""
    n = len(sample_id)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    nulls = pa.nulls(n, pa.string())
    return pa.table(
        {
            "sample_id": sample_id,
            "class_id": pa.nulls(n, pa.int32()) if class_id is None else class_id,
            "class_name": nulls if class_names is None else class_names,
            "seed": seed,
            "image_key": image_keys,
            "width": [width] * n,
            "height": [height] * n,
            "sha256": sha256,
            "image_bytes": image_bytes,
            "sampler": [settings.sampler] * n,
            "steps": [settings.steps] * n,
            "cfg_scale": [settings.cfg_scale] * n,
            "cfg_channels": [settings.cfg_channels] * n,
            "shard": [shard] * n,
            "prompt": nulls if prompt is None else prompt.cast(pa.string()),
            "negative_prompt": nulls if negative_prompt is None else negative_prompt.cast(pa.string()),
        },
        schema=SCHEMA,
    )


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
