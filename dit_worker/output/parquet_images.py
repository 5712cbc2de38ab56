"""--format parquet: one Parquet file per shard, its metadata columns plus the image bytes.

The `image` column is a struct of `bytes` (the stored PNG/JPEG/WebP) and `path` (the member name,
`<sample_id:08d>.<ext>`), the Arrow layout of Hugging Face `datasets`' `Image` feature. The schema
carries the feature description `datasets` looks for under the `huggingface` metadata key
(`{"info": {"features": {...}}}`, as `Features.arrow_schema` writes it), so
`load_dataset("parquet", data_files=...)` decodes the column to PIL images with no argument. Other
readers (pyarrow, Ray Data, DuckDB) see a plain struct column.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

IMAGE_COLUMN = "image"
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
# Row groups are the unit a streaming reader fetches and decodes: ~100 MB keeps one group's memory
# small next to a GPU job and each S3 range read large. `datasets` itself caps image row groups at
# 100 MB when it writes Parquet (config.MAX_ROW_GROUP_SIZE).
ROW_GROUP_BYTES = 100 * 10**6
COMPRESSION = "zstd"  # for the metadata columns; image bytes are already compressed and stored as they are

# Arrow types of the metadata columns -> the `Value` dtype names of `datasets` (docs/output.md). A
# column of another type is left out of the description and `datasets` infers it from Arrow.
_VALUE_DTYPES = {
    pa.bool_(): "bool",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.float32(): "float32",
    pa.float64(): "float64",
    pa.string(): "string",
}


def hf_features(schema: pa.Schema) -> dict[str, Any]:
    """The `datasets` feature description of a table whose `image` column has IMAGE_TYPE."""
    features: dict[str, Any] = {}
    for field in schema:
        if field.name == IMAGE_COLUMN:
            features[field.name] = {"_type": "Image"}
        elif field.type in _VALUE_DTYPES:
            features[field.name] = {"dtype": _VALUE_DTYPES[field.type], "_type": "Value"}
        elif pa.types.is_struct(field.type) and all(f.type in _VALUE_DTYPES for f in field.type):
            # --score classifier:NAME's probabilities: a dict of Values is `datasets`' struct feature
            features[field.name] = {f.name: {"dtype": _VALUE_DTYPES[f.type], "_type": "Value"} for f in field.type}
    return features


def rows_per_group(images: Sequence[bytes]) -> int:
    mean = sum(len(b) for b in images) / max(len(images), 1)
    return max(1, int(ROW_GROUP_BYTES // max(mean, 1)))


def image_table(metadata: pa.Table, images: Sequence[bytes], paths: Sequence[str]) -> pa.Table:
    """`metadata` (one row per image, in the same order) with the `image` column appended."""
    if not len(images) == len(paths) == metadata.num_rows:
        raise ValueError(f"{len(images)} images and {len(paths)} paths for {metadata.num_rows} metadata rows")
    arrays = [pa.array(images, pa.binary()), pa.array(paths, pa.string())]
    column = pa.StructArray.from_arrays(arrays, fields=list(IMAGE_TYPE))
    table = metadata.append_column(pa.field(IMAGE_COLUMN, IMAGE_TYPE), column)
    description = {"info": {"features": hf_features(table.schema)}}
    return table.replace_schema_metadata({"huggingface": json.dumps(description)})


def image_parquet_bytes(metadata: pa.Table, images: Sequence[bytes], paths: Sequence[str]) -> bytes:
    table = image_table(metadata, images, paths)
    scalar = [name for name in table.column_names if name != IMAGE_COLUMN]
    codecs = {name: COMPRESSION for name in scalar}
    codecs |= {f"{IMAGE_COLUMN}.bytes": "none", f"{IMAGE_COLUMN}.path": COMPRESSION}
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        row_group_size=rows_per_group(images),
        compression=codecs,
        # Distinct image bytes never form a dictionary, and min/max statistics of them skip nothing.
        use_dictionary=scalar,
        write_statistics=scalar,
    )
    return sink.getvalue().to_pybytes()
