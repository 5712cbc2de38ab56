"""Where a job's objects live below OUT (docs/output.md). Every key is derived from a shard index or
a sample id, so a retried shard overwrites exactly the objects of its first try."""

from __future__ import annotations

import re
from typing import Literal

# png: one object per image; webdataset: one tar per shard; parquet: one data part per shard (docs/output.md).
OutputFormat = Literal["png", "webdataset", "parquet"]
# --shard-size when not given: objects per shard are 1 + shard size for png (one object per image)
# and 2 for webdataset and parquet, whose container is built in the worker's memory (two shards in
# flight: ~2 x 4,000 x the encoded image size). At a billion images: png ~1.001e9 objects, the
# containers 5e5 (docs/output.md, "Objects per set").
DEFAULT_SHARD_SIZE: dict[str, int] = {"png": 1000, "webdataset": 4000, "parquet": 4000}
JOB_KEY = "job.json"
SUCCESS_KEY = "_SUCCESS"
LEASE_KEY = "_lease.json"  # one writer per output (dit_worker.output.lease)
METADATA_PREFIX = "metadata/part-"
PART_KEY = re.compile(r"^metadata/part-(\d+)\.parquet$")


def image_key(shard: int, sample_id: int, extension: str = "png") -> str:
    return f"images/{shard:05d}/{sample_id:08d}.{extension}"


def tar_key(shard: int) -> str:
    return f"shards/{shard:05d}.tar"


def data_key(shard: int) -> str:
    """--format parquet: the shard's images, with its metadata columns, in one Parquet file."""
    return f"data/part-{shard:05d}.parquet"


def member_name(sample_id: int, extension: str) -> str:
    """A webdataset member (samples are grouped by the name before the extension), and the `path`
    of a Parquet row's image."""
    return f"{sample_id:08d}.{extension}"


def part_key(shard: int) -> str:
    return f"{METADATA_PREFIX}{shard:05d}.parquet"
