"""The driver of `jobs.dedup`: checks (before anything is written), then each step's pending units on the
task pool, dedup.json last.

    summary = run_dedup(DedupConfig(out="s3://b/run", threshold=0.95))

The driver holds the shard indices (O(shards)), one listing per step to find what is done, the k-means
sample (bounded) and, in the merge, the links (O(duplicates)); never a per-row table of the set.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from dit_worker.curation.dedup.components import components
from dit_worker.curation.dedup.config import DedupConfig, Within
from dit_worker.curation.dedup.embeddings import EmbeddingSource
from dit_worker.curation.dedup.partition import SAMPLE_PER_CELL, cells_for, train_cells
from dit_worker.curation.dedup.steps import (
    EmbedRun,
    ReducePartition,
    RouteRun,
    WriteRun,
    embed_run,
    reduce_partition,
    route_run,
    write_run,
)
from dit_worker.curation.dedup.work_files import (
    CELLS_KEY,
    EMBED_PREFIX,
    GROUP,
    GROUPS_KEY,
    LINK,
    LINKS_PREFIX,
    MERGE_KEY,
    NEAREST_PREFIX,
    PLAN_KEY,
    ROUTE_PREFIX,
    SETTINGS_KEY,
    blocked_bytes,
    embed_dtype,
    route_dtype,
    run_key,
)
from dit_worker.curation.records import differences, read_json
from dit_worker.execution.tasks import Tasks, make_tasks
from dit_worker.metrics.clip_score import DEFAULT_CLIP
from dit_worker.metrics.hf_models import resolve_hf_model
from dit_worker.metrics.row_scores import EMBEDDING_COLUMN
from dit_worker.output.dedup_layout import DEDUP_JSON, DEDUP_PREFIX
from dit_worker.output.layout import JOB_KEY
from dit_worker.output.reader import OutputSet, OutputSetError, prefetch
from dit_worker.storage.objects import Storage

NUMBERED = re.compile(r"(\d+)\.(?:bin|parquet)$")


def set_kind(first: pa.Table) -> str:
    """'text' (every row of the first part has a prompt), 'class' (a class id), else 'unconditional'."""

    def filled(column: str) -> bool:
        return column in first.column_names and first.num_rows > 0 and first.column(column).null_count == 0

    return "text" if filled("prompt") else "class" if filled("class_id") else "unconditional"


def choose_within(config: DedupConfig, kind: str, url: str) -> Within:
    default: Within = {"text": "prompt", "class": "class"}.get(kind, "set")  # type: ignore[assignment]
    within = config.within or default
    needs = {"prompt": "text", "class": "class"}.get(within)
    if needs is not None and needs != kind:
        what = {"text": "a text-to-image set (prompts)", "class": "a class-conditional set",
                "unconditional": "an unconditional set"}[kind]  # fmt: skip
        raise ValueError(f"--within {within}: {url} is {what}; use --within {default}")
    return within


def embedding_source(first: pa.Table, clip_model: str | None) -> EmbeddingSource:
    """The stored column unless --clip-model names a model (then computed with it), else DEFAULT_CLIP."""
    if clip_model is None and EMBEDDING_COLUMN in first.column_names:
        return EmbeddingSource(None, int(first.schema.field(EMBEDDING_COLUMN).type.list_size))
    spec = clip_model or DEFAULT_CLIP
    model = resolve_hf_model(spec, flag="--clip-model", model_type="clip")
    dim = int(json.loads((model.path / "config.json").read_text()).get("projection_dim", 512))
    return EmbeddingSource(model, dim)


def _done(storage: Storage, prefix: str) -> dict[int, int]:
    """Unit index -> object size, from one listing."""
    return {int(m[1]): obj.size for obj in storage.list(prefix) if (m := NUMBERED.search(obj.key))}


def _map(tasks: Tasks, fn: Any, items: list) -> list:
    return list(tasks.map(fn, items))


def _sample(storage: Storage, sizes: dict[int, int], dim: int, want: int) -> np.ndarray:
    """About `want` rows for k-means, the same share from the start of every run's file (one request each)."""
    dtype = embed_dtype(dim)
    total = sum(sizes.values()) // dtype.itemsize
    parts = []
    for run in sorted(sizes):
        n = min(sizes[run] // dtype.itemsize, math.ceil(want * (sizes[run] // dtype.itemsize) / max(total, 1)))
        if n:
            data = storage.get_range(run_key(EMBED_PREFIX, run), 0, n * dtype.itemsize)
            parts.append(np.frombuffer(data, dtype)["vec"].astype(np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


def _merge(storage: Storage, partitions: int, runs: int) -> dict[str, int]:
    """Components over every partition's links; GROUP records blocked by run; the counts."""
    linked = list(prefetch(lambda p: np.frombuffer(storage.get(run_key(LINKS_PREFIX, p)), LINK), range(partitions)))
    links = np.concatenate(linked) if linked else np.zeros(0, LINK)
    ids, group, size, rank = components(links["a"], links["b"])
    run_of = np.zeros(ids.size, np.int64)  # every endpoint's run, from the link that names it
    run_of[np.searchsorted(ids, links["a"])] = links["run_a"]
    run_of[np.searchsorted(ids, links["b"])] = links["run_b"]
    records = np.zeros(ids.size, GROUP)
    records["sample_id"], records["group"], records["size"], records["rank"] = ids, group, size, rank
    counts = {"groups": int((rank == 0).sum()), "duplicates": int((rank > 0).sum()), "links": int(links.size)}
    storage.put(MERGE_KEY, json.dumps(counts).encode())
    storage.put(GROUPS_KEY, blocked_bytes(records, run_of, runs))  # last: the merge is done
    return counts


def run_dedup(config: DedupConfig) -> dict[str, Any]:
    """Validate (the set, --within against it, the embeddings' source, an earlier run's settings), then
    run every step's pending units; dedup.json last. Raises ValueError (OutputSetError,
    MetricsInputError) for a user's mistake, before anything is written."""
    t0 = time.perf_counter()
    output = OutputSet.open(config.out, s3_endpoint=config.s3_endpoint)
    if output.indices.size == 0:
        raise OutputSetError(f"{output.url}: no committed shard to deduplicate")
    storage, indices = output.storage, [int(k) for k in output.indices]
    first = OutputSet.read_part_table(storage, indices[0])
    within = choose_within(config, set_kind(first), output.url)
    source = embedding_source(first, config.clip_model)
    generated = read_json(storage, JOB_KEY) or {}
    per_run = math.ceil(len(indices) / config.runs)
    settings = {
        "threshold": config.threshold,
        "within": within,
        "embeddings": source.description,
        "cells": config.cells if within == "set" else None,
        "shards": len(indices),
        "shards_per_run": per_run,  # the work files' units
        "source_fingerprint_sha256": generated.get("fingerprint_sha256"),
    }
    finished = read_json(storage, DEDUP_JSON)
    stored = finished["settings"] if finished is not None else read_json(storage, SETTINGS_KEY)
    if stored is not None and (was := differences(stored, settings)):
        raise ValueError(
            f"{storage.child('dedup/')} holds another dedup run ({was}); rerun the same command, or remove "
            "that folder to start over"
        )
    if finished is not None:
        return finished | {"wall_time_s": round(time.perf_counter() - t0, 3), "steps_run": []}
    if stored is None:
        storage.put(SETTINGS_KEY, json.dumps(settings, indent=2).encode())
    runs = [tuple(indices[lo : lo + per_run]) for lo in range(0, len(indices), per_run)]
    # On S3 every node reads the work files: Ray tasks anywhere; a local folder exists on this node only.
    here = not output.url.startswith("s3://")
    tasks = make_tasks(local=not config.ray, items=len(runs), here=here, workers=config.workers)
    steps: list[str] = []
    try:
        done = _done(storage, EMBED_PREFIX)
        pending = [EmbedRun(r, shards, output.url, config.s3_endpoint, within, source)
                   for r, shards in enumerate(runs) if r not in done]  # fmt: skip
        if pending:
            steps.append(f"embed {len(pending)}")
            _map(tasks, embed_run, pending)
            done = _done(storage, EMBED_PREFIX)
        plan = read_json(storage, PLAN_KEY)
        if plan is None:
            rows = sum(done.values()) // embed_dtype(source.dim).itemsize
            cells = (config.cells or cells_for(rows)) if within == "set" else None
            if cells is not None:
                sample = _sample(storage, done, source.dim, SAMPLE_PER_CELL * cells)
                centroids = train_cells(sample, cells)
                cells = int(centroids.shape[0])
                storage.put(CELLS_KEY, _npy_bytes(centroids))
            plan = {"rows": rows, "dim": source.dim, "runs": len(runs), "cells": cells,
                    "partitions": max(1, math.ceil(rows / config.partition_rows))}  # fmt: skip
            storage.put(PLAN_KEY, json.dumps(plan).encode())
        partitions = int(plan["partitions"])
        routed = _done(storage, ROUTE_PREFIX)
        pending = [RouteRun(r, output.url, config.s3_endpoint, source.dim, partitions, config.threshold, within)
                   for r in range(len(runs)) if r not in routed]  # fmt: skip
        if pending:
            steps.append(f"route {len(pending)}")
            _map(tasks, route_run, pending)
        header, itemsize = 8 * (partitions + 1), route_dtype(source.dim).itemsize
        copies = sum(size - header for size in _done(storage, ROUTE_PREFIX).values()) // itemsize
        reduced = _done(storage, NEAREST_PREFIX)
        pending = [ReducePartition(p, output.url, config.s3_endpoint, source.dim, len(runs), config.threshold)
                   for p in range(partitions) if p not in reduced]  # fmt: skip
        if pending:
            steps.append(f"reduce {len(pending)}")
            _map(tasks, reduce_partition, pending)
        counts = read_json(storage, MERGE_KEY) if storage.exists(GROUPS_KEY) else None
        if counts is None:
            steps.append("merge")
            counts = _merge(storage, partitions, len(runs))
        written = set(_done(storage, DEDUP_PREFIX))
        pending = [WriteRun(r, shards, output.url, config.s3_endpoint, partitions)
                   for r, shards in enumerate(runs) if not written.issuperset(shards)]  # fmt: skip
        if pending:
            steps.append(f"write {len(pending)}")
            _map(tasks, write_run, pending)
    finally:
        tasks.close()
    record = {
        "settings": settings,
        "threshold": config.threshold,
        "within": within,
        "embeddings": source.description,
        "samples": int(plan["rows"]),
        "groups": counts["groups"],  # groups of 2 or more
        "duplicates": counts["duplicates"],  # rows with dup_rank > 0
        "links": counts["links"],
        "runs": len(runs),
        "partitions": partitions,
        "cells": plan["cells"],
        "routed_rows": copies,  # rows compared: --within set copies a row into every cell it must meet
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    storage.put(DEDUP_JSON, json.dumps(record, indent=2).encode())  # last: a complete run
    return record | {"wall_time_s": round(time.perf_counter() - t0, 3), "steps_run": steps}


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()
