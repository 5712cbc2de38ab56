"""Per-shard metadata parts (docs/output.md): one Parquet file per shard, one row per sample."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dit_worker.settings import SamplingSettings

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
    ]
)


def shard_table(
    shard: int,
    sample_id: np.ndarray,
    class_id: np.ndarray,
    seed: np.ndarray,
    class_names: Sequence[str],
    image_keys: Sequence[str],
    sha256: Sequence[str],
    image_bytes: Sequence[int],
    image_size: int,
    settings: SamplingSettings,
) -> pa.Table:
    n = len(sample_id)
    return pa.table(
        {
            "sample_id": sample_id,
            "class_id": class_id,
            "class_name": class_names,
            "seed": seed,
            "image_key": image_keys,
            "width": [image_size] * n,
            "height": [image_size] * n,
            "sha256": sha256,
            "image_bytes": image_bytes,
            "sampler": [settings.sampler] * n,
            "steps": [settings.steps] * n,
            "cfg_scale": [settings.cfg_scale] * n,
            "cfg_channels": [settings.cfg_channels] * n,
            "shard": [shard] * n,
        },
        schema=SCHEMA,
    )


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
