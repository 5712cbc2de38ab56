"""`jobs.dedup`'s costs (`python -m jobs.benchmark_dedup`), on sets of random unit embeddings stored as
`clip_embedding` columns (no images, no model: what is measured is the dedup's own work).

Each set has N rows of dimension D under prompts of P rows each (`--within prompt`), a fraction of them
planted near-duplicates (a row of the same prompt plus noise at cosine ~0.99). The command runs as a
process of its own on the task pool; its driver's and its task processes' peak resident memory (VmHWM,
polled from /proc) and wall time are reported, with the work files' bytes per row and the planted
duplicates found.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa

from dit_worker.output.layout import JOB_KEY, SUCCESS_KEY, part_key
from dit_worker.output.metadata import parquet_bytes
from dit_worker.storage.objects import open_storage

# The work files' documented layout (docs/output.md, "Near-duplicates"); curation is this package's floor,
# so its modules are not imported here (tests/test_layers.py).
EMBED_PREFIX, ROUTE_PREFIX = "dedup/work/embed/", "dedup/work/route/"
NOISE = 0.1  # per-component noise of a planted copy, in units of 1/sqrt(D): cosine ~ 1 / sqrt(1 + NOISE**2)


def write_embedding_set(out: Path, rows: int, dim: int, shard_size: int, per_prompt: int, planted: float,
                        seed: int = 0) -> int:  # fmt: skip
    """A set of `rows` random unit embeddings, shard by shard (memory: one shard); the planted copies."""
    store = open_storage(str(out))
    rng = np.random.default_rng(seed)
    store.put(JOB_KEY, json.dumps({"fingerprint_sha256": "0" * 64, "benchmark": "dedup"}).encode())
    copies = 0
    for shard in range(-(-rows // shard_size)):
        ids = np.arange(shard * shard_size, min(rows, (shard + 1) * shard_size), dtype=np.int64)
        vectors = rng.standard_normal((ids.size, dim), dtype=np.float32)
        copy = np.flatnonzero(rng.random(ids.size) < planted)
        copy = copy[copy > 0]
        vectors[copy] = vectors[copy - 1] + NOISE * rng.standard_normal((copy.size, dim), dtype=np.float32)
        prompt = ids // per_prompt
        prompt[copy] = prompt[copy - 1]  # the copy's prompt is its original's
        copies += int((~np.isin(copy - 1, copy)).sum())  # a copy of a copy copies a row since replaced: not counted
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        n = ids.size
        table = pa.table({
            "sample_id": ids, "class_id": pa.nulls(n, pa.int32()),
            "prompt": pa.array([f"prompt {p}" for p in prompt.tolist()]),
            "image_key": pa.array([f"images/{shard:05d}/{i:08d}.png" for i in ids.tolist()]),
            "width": pa.array(np.full(n, 256, np.int32)), "height": pa.array(np.full(n, 256, np.int32)),
            "sha256": pa.array(["0" * 64] * n),
            "clip_embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        })  # fmt: skip
        store.put(part_key(shard), parquet_bytes(table))
    store.put(SUCCESS_KEY, b"{}")
    return copies


def _peaks(root: psutil.Process, peaks: dict[str, float], stop: threading.Event) -> None:
    """Poll VmHWM (a peak the kernel keeps) of the driver and of every process below it, in MiB."""

    def hwm(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
        except (OSError, StopIteration):
            return 0.0

    while not stop.is_set():
        peaks["driver"] = max(peaks["driver"], hwm(root.pid))
        try:
            children = root.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            peaks["task"] = max(peaks["task"], hwm(child.pid))
        time.sleep(0.05)


def run_dedup_process(out: Path, threshold: float) -> dict[str, Any]:
    """`python -m jobs.dedup --out OUT --threshold T --within prompt` as a process of its own, measured."""
    cmd = [sys.executable, "-m", "jobs.dedup", "--out", str(out), "--threshold", str(threshold), "--within", "prompt"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks, stop = {"driver": 0.0, "task": 0.0}, threading.Event()
    poller = threading.Thread(target=_peaks, args=(psutil.Process(proc.pid), peaks, stop), daemon=True)
    poller.start()
    stdout, stderr = proc.communicate()
    stop.set()
    poller.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"jobs.dedup failed ({proc.returncode}): {stderr.strip()[-500:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "driver_peak_rss_mib": round(peaks["driver"], 1),
            "task_peak_rss_mib": round(peaks["task"], 1), "summary": summary}  # fmt: skip


def work_bytes(out: Path, prefix: str) -> int:
    return sum(obj.size for obj in open_storage(str(out)).list(prefix))


def bench(work: Path, rows: int, dim: int, shard_size: int, per_prompt: int, planted: float,
          threshold: float) -> dict[str, Any]:  # fmt: skip
    """Build (or reuse) the set, run the command over it from scratch, and report."""
    out = work / f"set-{rows}-{dim}"
    marker = out / "planted.json"
    if not marker.is_file():
        copies = write_embedding_set(out, rows, dim, shard_size, per_prompt, planted)
        marker.write_text(json.dumps({"planted": copies}))
    copies = json.loads(marker.read_text())["planted"]
    subprocess.run(["rm", "-rf", str(out / "dedup")], check=True)
    measured = run_dedup_process(out, threshold)
    summary = measured.pop("summary")
    line = {
        "rows": rows, "dim": dim, "shard_size": shard_size, "rows_per_prompt": per_prompt, "planted": copies,
        "duplicates_found": summary["duplicates"], "groups": summary["groups"], "runs": summary["runs"],
        "partitions": summary["partitions"], **measured,
        "rows_per_s": round(rows / measured["wall_s"], 1),
        "s_per_million": round(measured["wall_s"] * 1e6 / rows, 1),
        "embed_bytes_per_row": round(work_bytes(out, EMBED_PREFIX) / rows, 1),
        "route_bytes_per_row": round(work_bytes(out, ROUTE_PREFIX) / rows, 1),
        "work_bytes_per_row": round(work_bytes(out, "dedup/work/") / rows, 1),
        "dedup_part_bytes_per_row": round(work_bytes(out, "dedup/part-") / rows, 1),
        "cores": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip
    return line
