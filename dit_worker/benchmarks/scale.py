"""The driver's costs at scale (`python -m jobs.benchmark_scale`), measured without a model.

`plan`: a manifest of N rows (derived --classes ranges, or Parquet class and prompt manifests the
benchmark builds), planned and validated in a fresh process: peak RSS, seconds, the identity's
hash time, and the bytes of one shard's task.

`resume`: an output with N committed shards recorded through the commit index, as a run records
them (batched logs, compaction, the final snapshot), then read back as a resuming driver reads it:
storage requests (counted at the client: boto3's `before-call` events on S3, calls on a local
folder) and seconds for each, and the index's bytes per shard.
"""

from __future__ import annotations

import pickle
import resource
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from dit_worker.benchmarks.reader_memory import peak_rss_mib
from dit_worker.labels import ClassNames
from dit_worker.manifest.scan import scan_files
from dit_worker.manifest.sources import DerivedManifest
from dit_worker.output.commit_index import SNAPSHOT_KEY, CommitIndex, CommitRecorder
from dit_worker.storage.objects import LocalStorage, S3Storage, Storage, open_storage


@contextmanager
def counted(storage: Storage) -> Iterator[Counter[str]]:
    """Requests `storage` makes inside the block, by operation."""
    calls: Counter[str] = Counter()
    if isinstance(storage, S3Storage):

        def count(model: Any, **_: Any) -> None:
            calls[model.name] += 1

        storage.client.meta.events.register("before-call.s3", count)
        try:
            yield calls
        finally:
            storage.client.meta.events.unregister("before-call.s3", count)
        return
    assert isinstance(storage, LocalStorage)
    originals = {name: getattr(storage, name) for name in ("put", "get", "list", "delete", "stat")}
    inside = [0]  # a call made by another (a listing stats each file it lists) is part of that request

    def wrap(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if not inside[0]:
                calls[name] += 1
            inside[0] += 1
            try:
                result = originals[name](*args, **kwargs)
                return list(result) if name == "list" else result  # listed (and stat-ed) inside this request
            finally:
                inside[0] -= 1

        return call

    for name in originals:
        setattr(storage, name, wrap(name))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(storage, name, fn)


def resume_cost(url: str, committed: int, s3_endpoint: str | None = None) -> dict[str, Any]:
    """Record `committed` shards under a fresh prefix of `url`, then read the index back."""
    storage = open_storage(f"{url.rstrip('/')}/{committed}-{uuid.uuid4().hex[:8]}", s3_endpoint=s3_endpoint)
    index = CommitIndex.empty(committed)
    recorder = CommitRecorder(storage, index, uuid.uuid4().hex, lambda: None, seconds=float("inf"))
    t0 = time.perf_counter()
    with counted(storage) as writes:
        for shard in range(committed):
            recorder.record(shard)
        recorder.close()
    record_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with counted(storage) as reads:
        read = CommitIndex.read(storage)
    resume_s = time.perf_counter() - t0
    assert read is not None and read.committed().size == committed
    snapshot = next(o.size for o in storage.list(SNAPSHOT_KEY))
    return {
        "benchmark": "resume",
        "storage": storage.url.split("://")[0] if "://" in storage.url else "local",
        "committed_shards": committed,
        "record_requests": sum(writes.values()),
        "record_requests_per_shard": round(sum(writes.values()) / committed, 5),
        "record_s": round(record_s, 3),
        "resume_requests": sum(reads.values()),
        "resume_requests_by_kind": dict(reads),
        "resume_s": round(resume_s, 4),
        "index_bytes": snapshot,
        "index_bytes_per_shard": round(snapshot / committed, 4),
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


# --- planning: the driver's memory and time from the flags or manifest to the pending shards ---

PLAN_KINDS = ("classes", "class-parquet", "prompt-parquet")
WRITE_ROWS = 1 << 20  # rows per write while building a manifest (and per row group: 16 per write)


def build_manifest(kind: str, rows: int, folder: Path) -> Path | None:
    """The benchmark's manifest of `rows` rows (reused when present): None for derived --classes;
    a class Parquet (sequential ids, seeds scattered over 2**32, random classes); or a prompt
    Parquet with prompts of 60-160 characters, one distinct prompt per 10 consecutive rows (a
    distinct seed each)."""
    if kind == "classes":
        return None
    path = folder / f"{kind}-{rows}.parquet"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(0)
    writer: pq.ParquetWriter | None = None
    for start in range(0, rows, WRITE_ROWS):
        ids = np.arange(start, min(start + WRITE_ROWS, rows), dtype=np.int64)
        seed = (ids * 2654435761 + 12345) % 2**32  # distinct modulo 2**32, not in order
        if kind == "class-parquet":
            classes = rng.integers(0, 1000, ids.size, dtype=np.int32)
            table = pa.table({"sample_id": ids, "class_id": classes, "seed": seed})
        else:  # prompt-major, as --prompts --per-prompt 10 lays rows out: each prompt's 10 rows in a row
            first = int(ids[0]) // 10
            prompts = _prompts(np.arange(first, int(ids[-1]) // 10 + 1)).take(pa.array(ids // 10 - first))
            table = pa.table({"sample_id": ids, "prompt": prompts, "seed": seed})
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table, row_group_size=1 << 16)
    assert writer is not None
    writer.close()
    tmp.rename(path)
    return path


_WORDS = np.array(
    [
        "red",
        "blue",
        "small",
        "large",
        "old",
        "young",
        "quiet",
        "bright",
        "dark",
        "wooden",
        "glass",
        "stone",
        "cat",
        "dog",
        "house",
        "boat",
        "tree",
        "river",
        "mountain",
        "city",
        "garden",
        "window",
        "street",
        "bridge",
        "market",
        "forest",
        "lake",
        "painting",
        "photo",
    ]
)


def _prompts(numbers: np.ndarray) -> pa.Array:
    """Prompt n: a deterministic sentence of 8-24 words and the number, 60-160 characters."""
    texts = []
    for n in numbers.tolist():
        words = _WORDS[[(n >> (3 * k)) % len(_WORDS) for k in range(8 + n % 17)]]
        texts.append(f"a {' '.join(words)} scene, study number {n}")
    return pa.array(texts, pa.large_string())


def plan_cost(kind: str, rows: int, folder: Path, shard_size: int = 1000) -> dict[str, Any]:
    """Plan and validate `rows` rows as the driver does (every check but the tokenizer, which has
    its own cost per distinct prompt), then list the pending shards of a new output. Run this in a
    fresh process: the peak RSS reported is the process's own (VmHWM)."""
    path = build_manifest(kind, rows, folder)
    base_rss = peak_rss_mib()
    t0 = time.perf_counter()
    with task_processes() as peaks:
        if path is None:
            manifest: Any = DerivedManifest.of_classes(list(range(1000)), rows // 1000, 0)
        else:
            manifest = scan_files(str(path), ClassNames({}, 1000), "class" if kind == "class-parquet" else "text",
                                  no_prompt_check if kind == "prompt-parquet" else None)  # fmt: skip
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    identity = manifest.identity
    hash_s = time.perf_counter() - t0
    total = -(-manifest.num_rows // shard_size)
    pending = CommitIndex.empty(total).missing(total)
    first = manifest.rows(0, min(shard_size, manifest.num_rows))
    assert len(first.load()) == min(shard_size, rows) and pending.size == total and identity
    return {
        "benchmark": "plan",
        "manifest": kind,
        "rows": rows,
        "manifest_bytes": path.stat().st_size if path else 0,
        "shards": total,
        "plan_validate_s": round(plan_s, 3),
        "identity_s": round(hash_s, 4),  # files: hashed during the scan (in plan_validate_s); derived: here
        "task_bytes": len(pickle.dumps(first)),
        "driver_peak_rss_mib": peak_rss_mib(),
        "python_and_imports_rss_mib": base_rss,
        "task_processes": len(peaks),  # the scan's tasks (execution/tasks.py: processes of this machine)
        "task_processes_peak_rss_mib": round(sum(peaks.values()), 1),  # each one's peak, summed
    }


def no_prompt_check(texts: list[str]) -> list[tuple[int, str]]:
    """The tokenizer's place in the scan, at no cost (it has its own cost per distinct prompt)."""
    return []


@contextmanager
def task_processes(every_s: float = 0.1) -> Iterator[dict[int, float]]:
    """pid -> peak RSS (VmHWM, MiB) of each process this one starts inside the block, polled."""
    peaks: dict[int, float] = {}
    done = threading.Event()

    def poll() -> None:
        while not done.wait(every_s):
            for child in psutil.Process().children(recursive=True):
                try:
                    with open(f"/proc/{child.pid}/status") as f:
                        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
                except (OSError, StopIteration):
                    continue
                peaks[child.pid] = max(peaks.get(child.pid, 0.0), hwm)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        done.set()
        thread.join()
