"""What `jobs.dedup` leaves under OUT/dedup/ for every reader of the set (docs/output.md): one part per committed
source shard, and dedup.json, written last."""

from __future__ import annotations

import pyarrow as pa

DEDUP_JSON = "dedup/dedup.json"
DEDUP_PREFIX = "dedup/part-"
DEDUP_SCHEMA = pa.schema(
    [pa.field("sample_id", pa.int64(), nullable=False), pa.field("group", pa.int64(), nullable=False),
     pa.field("group_size", pa.int32(), nullable=False), pa.field("dup_rank", pa.int32(), nullable=False),
     pa.field("nearest", pa.int64()), pa.field("similarity", pa.float32())]
)  # fmt: skip


def dedup_key(shard: int) -> str:
    return f"{DEDUP_PREFIX}{shard:05d}.parquet"
