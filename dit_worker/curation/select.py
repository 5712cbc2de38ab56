"""`jobs.select`: a filtered copy of a finished set, written as a set of its own (images copied byte for
byte, or re-packed into another --format), shard for shard, so a killed run resumes where it stopped.

    summary = run_select(SelectConfig(source="s3://b/run", where="clip_score > 28", to="s3://b/kept"))

Source shard k becomes destination shard k holding the rows of k the filter keeps (possibly none), its
metadata part written last, as generation commits. The driver holds the shard indices only.

After `jobs.dedup`, the filter may also name its columns (`dup_rank == 0`, `group_size`, `similarity`, ...):
each shard's task joins OUT/dedup/part-k.parquet on sample_id (one more request per shard, its own work);
the joined columns decide the filter and are not written into the selection's metadata (they describe
the source set's groups, which the selection no longer holds whole).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from dit_worker.curation.records import differences, read_json
from dit_worker.curation.where import WhereError, column_names, parse_where
from dit_worker.execution.tasks import make_tasks
from dit_worker.output.commit_index import listed_parts
from dit_worker.output.dedup_layout import DEDUP_JSON, DEDUP_SCHEMA, dedup_key
from dit_worker.output.layout import (
    JOB_KEY,
    SUCCESS_KEY,
    OutputFormat,
    data_key,
    image_key,
    member_name,
    part_key,
    tar_key,
)
from dit_worker.output.metadata import parquet_bytes
from dit_worker.output.parquet_images import image_parquet_bytes
from dit_worker.output.reader import OutputSet, OutputSetError, split_container_key
from dit_worker.output.webdataset import webdataset_tar
from dit_worker.storage.objects import Storage, open_storage

ROW = "__row"  # the row number carried through the filter
DEDUP_COLUMNS = tuple(name for name in DEDUP_SCHEMA.names if name != "sample_id")


class SelectConfig(BaseModel):
    """`python -m jobs.select`'s options, validated at the edge (the expression against the set's columns
    in `run_select`, before anything is written)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(min_length=1)  # --out: the set to select from
    where: str = Field(min_length=1)
    to: str = Field(min_length=1)
    format: OutputFormat | None = None  # None: the source's
    s3_endpoint: str | None = None
    ray: bool = False  # shards on Ray tasks (RAY_ADDRESS) instead of this machine's processes


@dataclass(frozen=True)
class ShardSelection:
    """One shard's work, as it travels to a task (plain values: picklable)."""

    shard: int
    source: str
    to: str
    where: str
    format: OutputFormat
    s3_endpoint: str | None
    dedup: bool = False  # join the shard's OUT/dedup part before filtering


def source_format(table: pa.Table) -> OutputFormat:
    keys = table.column("image_key").to_pylist()
    split = split_container_key(keys[0]) if keys else None
    if split is None:
        return "png"
    return "parquet" if split[0].endswith(".parquet") else "webdataset"


def dedup_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` plus the dedup columns it does not already hold (a set's own column of that name wins)."""
    extra = [DEDUP_SCHEMA.field(name) for name in DEDUP_COLUMNS if name not in schema.names]
    return pa.schema([*schema, *extra])


def with_dedup(storage: Storage, shard: int, table: pa.Table) -> pa.Table:
    """`table` (sorted by sample_id) with shard `shard`'s dedup columns, row for row."""
    dedup = pq.read_table(pa.BufferReader(storage.get(dedup_key(shard))))
    dedup = dedup.take(pc.sort_indices(dedup, [("sample_id", "ascending")]))
    if dedup.column("sample_id").to_pylist() != table.column("sample_id").to_pylist():
        raise OutputSetError(
            f"{storage.child(dedup_key(shard))}: not the sample ids of metadata part {shard}; rerun jobs.dedup"
        )
    for name in DEDUP_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(DEDUP_SCHEMA.field(name), dedup.column(name))
    return table


def select_shard(task: ShardSelection) -> tuple[int, int, int]:
    """Copy shard `task.shard`'s kept rows; (shard, rows kept, rows in the source shard)."""
    src = open_storage(task.source, s3_endpoint=task.s3_endpoint)
    dest = open_storage(task.to, s3_endpoint=task.s3_endpoint)
    table = OutputSet.read_part_table(src, task.shard)
    table = table.take(pc.sort_indices(table, [("sample_id", "ascending")]))  # stable: Shard's row order
    shard = OutputSet.shard_of(task.shard, table, src.child(part_key(task.shard)))
    numbered = with_dedup(src, task.shard, table) if task.dedup else table
    numbered = numbered.append_column(ROW, pa.array(range(table.num_rows), pa.int64()))
    rows = numbered.filter(parse_where(task.where, numbered.schema)).column(ROW).to_pylist()
    images = list(OutputSet(src).image_bytes(shard, rows))
    kept = table.take(pa.array(rows, pa.int64()))
    ids = kept.column("sample_id").to_pylist()
    exts = [key.rsplit(".", 1)[-1] for key in kept.column("image_key").to_pylist()]
    if task.format == "png":
        keys = [image_key(task.shard, i, ext) for i, ext in zip(ids, exts, strict=True)]
        for key, data in zip(keys, images, strict=True):
            dest.put(key, data)
    else:
        container = tar_key(task.shard) if task.format == "webdataset" else data_key(task.shard)
        keys = [f"{container}#{member_name(i, ext)}" for i, ext in zip(ids, exts, strict=True)]
    kept = kept.set_column(kept.schema.get_field_index("image_key"), "image_key", pa.array(keys, pa.string()))
    if images and task.format == "webdataset":
        dest.put(tar_key(task.shard), webdataset_tar(kept, images, exts[0]))  # a set has one image format
    elif images and task.format == "parquet":
        members = [member_name(i, ext) for i, ext in zip(ids, exts, strict=True)]
        dest.put(data_key(task.shard), image_parquet_bytes(kept, images, members))
    dest.put(part_key(task.shard), parquet_bytes(kept))  # last: the shard counts once this exists
    return task.shard, len(rows), table.num_rows


def run_select(config: SelectConfig) -> dict[str, Any]:
    """Validate (the expression against the set's columns, the destination), then copy every source shard
    not yet in the destination; `_SUCCESS` last. Raises ValueError (WhereError) and OutputSetError for a
    user's mistake, before anything is written."""
    t0 = time.perf_counter()
    source = OutputSet.open(config.source, s3_endpoint=config.s3_endpoint)
    if source.indices.size == 0:
        raise OutputSetError(f"{source.url}: no committed shard to select from")
    first = OutputSet.read_part_table(source.storage, int(source.indices[0]))
    named = column_names(config.where)
    dedup = read_json(source.storage, DEDUP_JSON) if named & set(DEDUP_COLUMNS) - set(first.column_names) else None
    if dedup is None and named & set(DEDUP_COLUMNS) - set(first.column_names):
        column = sorted(named & set(DEDUP_COLUMNS) - set(first.column_names))[0]
        raise WhereError(
            f"--where {config.where!r}: column {column!r} comes from jobs.dedup, which has not run on {source.url} "
            f"(no {DEDUP_JSON}); run python -m jobs.dedup --out {source.url} first"
        )
    parse_where(config.where, dedup_schema(first.schema) if dedup is not None else first.schema)
    fmt = config.format or source_format(first)
    dest = open_storage(config.to, s3_endpoint=config.s3_endpoint)
    if dest.url.rstrip("/") == source.url.rstrip("/"):
        raise ValueError(f"--to {config.to}: the destination is the source set; pick another folder or prefix")
    generated = read_json(source.storage, JOB_KEY) or {}
    record = {
        "selected_from": source.url,
        "where": config.where,
        "format": fmt,
        "source_fingerprint_sha256": generated.get("fingerprint_sha256"),
        "source_shards": int(source.indices.size),
        "source_complete": source.complete,
        "dedup": dedup["settings"] if dedup is not None else None,  # the dedup run the filter reads
    }
    stored = read_json(dest, JOB_KEY)
    if stored is None and any(True for _ in dest.list("")):
        raise ValueError(f"--to {dest.url}: not empty and not a jobs.select output; pick an empty folder or prefix")
    if stored is not None:
        if was := differences(stored, record):
            raise ValueError(
                f"--to {dest.url} holds another selection ({was}); rerun the same command or pick another --to"
            )
    else:
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        body = record | {"source_job": generated, "created_at": created}
        dest.put(JOB_KEY, json.dumps(body, indent=2).encode())
    done = listed_parts(dest)
    pending = [int(k) for k in source.indices if int(k) not in done]
    tasks = make_tasks(local=not config.ray, items=len(pending))
    kept = rows = 0
    try:
        items = (ShardSelection(k, source.url, dest.url, config.where, fmt, config.s3_endpoint, dedup is not None)
                 for k in pending)  # fmt: skip
        for _, n_kept, n_rows in tasks.map(select_shard, items):
            kept, rows = kept + n_kept, rows + n_rows
    finally:
        tasks.close()
    summary = {
        "selected_from": source.url,
        "where": config.where,
        "shards": int(source.indices.size),
        "shards_selected": len(pending),
        "shards_skipped": len(done),
        "rows_read": rows,  # in the shards this run selected
        "rows_kept": kept,
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    dest.put(SUCCESS_KEY, json.dumps(summary, indent=2).encode())
    return summary
