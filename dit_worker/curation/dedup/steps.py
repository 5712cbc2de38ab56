"""The tasks of a dedup run, one unit of work each, whose output file's existence means it is done (a
killed run's rerun skips it). Items are plain values (picklable: processes or Ray tasks).

Storage requests (R runs, P partitions): embed: the run's metadata parts (and images when no embedding
is stored) + 1 put; route: 1 get (+1 for the cells) + 1 put; reduce: 2 ranged gets per run + 2 puts;
write: 2 ranged gets per partition + 2 + one put per source shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dit_worker.curation.dedup.config import Within
from dit_worker.curation.dedup.embeddings import EmbeddingSource, shard_embeddings
from dit_worker.curation.dedup.partition import partition_of, replicate
from dit_worker.curation.dedup.search import bucket_pairs
from dit_worker.curation.dedup.work_files import (
    CELLS_KEY,
    EMBED_PREFIX,
    GROUP,
    GROUPS_KEY,
    LINK,
    LINKS_PREFIX,
    NEAREST,
    NEAREST_PREFIX,
    ROUTE_PREFIX,
    blocked_bytes,
    embed_dtype,
    read_block,
    route_dtype,
    run_key,
)
from dit_worker.output.dedup_layout import DEDUP_SCHEMA, dedup_key
from dit_worker.output.metadata import parquet_bytes
from dit_worker.output.reader import OutputSet, prefetch
from dit_worker.storage.objects import open_storage


@dataclass(frozen=True)
class EmbedRun:
    """Embed the source shards of one run."""

    run: int
    shards: tuple[int, ...]
    out: str
    s3_endpoint: str | None
    within: Within
    source: EmbeddingSource


def embed_run(task: EmbedRun) -> int:
    """Write the run's EMBED records; its rows."""
    output = OutputSet(open_storage(task.out, s3_endpoint=task.s3_endpoint))  # not `open`: no listing per task
    parts = []
    for shard in task.shards:
        ids, keys, vectors = shard_embeddings(output, shard, task.source, task.within)
        records = np.zeros(ids.size, embed_dtype(task.source.dim))
        records["sample_id"], records["shard"], records["key"], records["vec"] = ids, shard, keys, vectors
        parts.append(records)
    records = np.concatenate(parts) if parts else np.zeros(0, embed_dtype(task.source.dim))
    output.storage.put(run_key(EMBED_PREFIX, task.run), records.tobytes())
    return int(records.size)


@dataclass(frozen=True)
class RouteRun:
    """Send one run's rows to their partitions (--within set: a copy into every cell it must meet)."""

    run: int
    out: str
    s3_endpoint: str | None
    dim: int
    partitions: int
    threshold: float
    within: Within


def route_run(task: RouteRun) -> int:
    """Write the run's ROUTE records, blocked by partition; the copies written."""
    storage = open_storage(task.out, s3_endpoint=task.s3_endpoint)
    rows = np.frombuffer(storage.get(run_key(EMBED_PREFIX, task.run)), embed_dtype(task.dim))
    if task.within == "set":
        centroids = np.load(storage.open_object(CELLS_KEY))
        take, cells, owner = replicate(rows["vec"], centroids, task.threshold)
        keys = np.stack([cells, np.zeros_like(cells)], 1)
    else:
        take, keys, owner = np.arange(rows.size), rows["key"], np.ones(rows.size, bool)
    records = np.zeros(take.size, route_dtype(task.dim))
    picked = rows[take]
    records["sample_id"], records["shard"], records["vec"] = picked["sample_id"], picked["shard"], picked["vec"]
    records["key"], records["run"], records["owner"] = keys, task.run, owner
    storage.put(run_key(ROUTE_PREFIX, task.run), blocked_bytes(records, partition_of(keys, task.partitions),
                                                               task.partitions))  # fmt: skip
    return int(records.size)


@dataclass(frozen=True)
class ReducePartition:
    """Compare the rows of one partition, bucket by bucket."""

    partition: int
    out: str
    s3_endpoint: str | None
    dim: int
    runs: int
    threshold: float


def reduce_partition(task: ReducePartition) -> int:
    """Write the partition's links, then its owned rows' nearest (blocked by run: the done marker); the links."""
    storage = open_storage(task.out, s3_endpoint=task.s3_endpoint)
    dtype = route_dtype(task.dim)
    # One block from every run's file: ranged reads, a window of them in flight (S3 latency, not bandwidth).
    blocks = list(prefetch(lambda r: read_block(storage, run_key(ROUTE_PREFIX, r), task.partition, dtype),
                           range(task.runs)))  # fmt: skip
    rows = np.concatenate(blocks) if blocks else np.zeros(0, dtype)
    order = np.lexsort((rows["key"][:, 1], rows["key"][:, 0]))  # stable: run order kept within a bucket
    rows = rows[order]
    keys = rows["key"]
    starts = np.flatnonzero(np.concatenate([[True], (keys[1:] != keys[:-1]).any(1)])) if rows.size else []
    ends = [*starts[1:], rows.size] if rows.size else []  # a partition may hold no bucket at all
    links, nearest = [], []
    for lo, hi in zip(starts, ends, strict=True):
        bucket = rows[lo:hi]
        q, m, nq, nm, sim = bucket_pairs(bucket["vec"], bucket["owner"].astype(bool), task.threshold)
        pairs = np.zeros(q.size, LINK)
        a, b = bucket["sample_id"][q], bucket["sample_id"][m]
        swap = a > b
        pairs["a"], pairs["b"] = np.where(swap, b, a), np.where(swap, a, b)
        pairs["run_a"] = np.where(swap, bucket["run"][m], bucket["run"][q])
        pairs["run_b"] = np.where(swap, bucket["run"][q], bucket["run"][m])
        links.append(pairs)
        near = np.zeros(nq.size, NEAREST)
        near["sample_id"], near["shard"] = bucket["sample_id"][nq], bucket["shard"][nq]
        near["nearest"] = np.where(nm >= 0, bucket["sample_id"][np.maximum(nm, 0)], -1)
        near["similarity"] = sim
        nearest.append((near, bucket["run"][nq]))
    linked = np.concatenate(links) if links else np.zeros(0, LINK)
    storage.put(run_key(LINKS_PREFIX, task.partition), linked.tobytes())
    near = np.concatenate([n for n, _ in nearest]) if nearest else np.zeros(0, NEAREST)
    run_of = np.concatenate([r for _, r in nearest]).astype(np.int64) if nearest else np.zeros(0, np.int64)
    storage.put(run_key(NEAREST_PREFIX, task.partition), blocked_bytes(near, run_of, task.runs))
    return int(linked.size)


@dataclass(frozen=True)
class WriteRun:
    """Write the dedup parts of one run's source shards."""

    run: int
    shards: tuple[int, ...]
    out: str
    s3_endpoint: str | None
    partitions: int


def write_run(task: WriteRun) -> int:
    """One OUT/dedup/part-k.parquet per source shard k of the run; the rows written."""
    storage = open_storage(task.out, s3_endpoint=task.s3_endpoint)
    blocks = list(prefetch(lambda p: read_block(storage, run_key(NEAREST_PREFIX, p), task.run, NEAREST),
                           range(task.partitions)))  # fmt: skip
    near = np.concatenate(blocks) if blocks else np.zeros(0, NEAREST)
    near = near[np.argsort(near["sample_id"], kind="stable")]
    grouped = read_block(storage, GROUPS_KEY, task.run, GROUP)  # in sample_id order
    at = np.minimum(np.searchsorted(grouped["sample_id"], near["sample_id"]), max(grouped.size - 1, 0))
    hit = grouped["sample_id"][at] == near["sample_id"] if grouped.size else np.zeros(near.size, bool)
    group = np.where(hit, grouped["group"][at] if grouped.size else 0, near["sample_id"])
    size = np.where(hit, grouped["size"][at] if grouped.size else 0, 1).astype(np.int32)
    rank = np.where(hit, grouped["rank"][at] if grouped.size else 0, 0).astype(np.int32)
    for shard in task.shards:
        mine = near["shard"] == shard
        none = near["nearest"][mine] < 0
        table = pa.table(
            [
                pa.array(near["sample_id"][mine], pa.int64()),
                pa.array(group[mine], pa.int64()),
                pa.array(size[mine], pa.int32()),
                pa.array(rank[mine], pa.int32()),
                pa.array(near["nearest"][mine], pa.int64(), mask=none),
                pa.array(near["similarity"][mine], pa.float32(), mask=none),
            ],
            schema=DEDUP_SCHEMA,
        )
        storage.put(dedup_key(shard), parquet_bytes(table))
    return int(near.size)
