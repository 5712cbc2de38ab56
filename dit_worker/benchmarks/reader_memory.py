"""`python -m jobs.benchmark_readers`: peak memory of the set readers at N and at scale·N samples.

Two synthetic sets are written (`build_set`: --format parquet, tiny images, through the job's own
metadata and data-part writers; 256 distinct images reused, so building costs metadata, not
encoding), and each measurement runs in a fresh process that reports its peak resident set:

- `import`: the modules only (python, numpy, pyarrow, torch): the floor the others stand on;
- `open`: `OutputSet.open`, then the checks `jobs.fid` and `jobs.export_npz` make before any heavy
  work (`summary()`: every metadata part read once; `check_unique_ids`, `image_size`, `labelled`);
- `export`: `jobs.export_npz` (`export_set`) of the whole set to an .npz beside the sets, removed after;
- `fid-merge`: the driver side of `jobs.fid` without Inception: the set opened and checked, then one
  part per shard as a feature task returns it (the shard's ids and class ids, random float32 pool
  features and logits, 12 KiB per sample, and its own float64 moment arrays, 66 MB), merged by
  `StatisticsMerger` with the default 50,000-sample subsample; then FID against the moments of one
  part and the Inception Score of the subsample. Precision/recall (k-NN over the 50,000 rows, the
  same size at any N) is left out: minutes of CPU, no change with N.

The peak is the child's VmHWM (/proc/self/status: the high-water mark of its own address space);
`resource.getrusage(RUSAGE_SELF).ru_maxrss` is reported beside it, but Linux carries that over
from the parent across fork and exec, so it can only be as low as the parent's. "Flat" means the
peak at scale·N is within `max_growth` (default 10%) of the peak at N.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("import", "open", "export", "fid-merge")
DISTINCT_IMAGES = 256
NUM_CLASSES = 1000


@dataclass(frozen=True)
class _Row:
    """The sampling settings every metadata row records (any values do for a synthetic set)."""

    sampler: str = "ddim"
    steps: int = 1
    cfg_scale: float | None = None
    cfg_channels: int | None = None


def build_set(url: str, n: int, *, shard_size: int, side: int = 8, seed: int = 0) -> None:
    """`n` samples of `side`-pixel images in --format parquet, class i % 1000, committed shard by shard
    (metadata part last), `_SUCCESS` at the end: a set every reader takes for a jobs.generate one."""
    from dit_worker.output.encoding import PNG
    from dit_worker.output.layout import JOB_KEY, SUCCESS_KEY, data_key, member_name, part_key
    from dit_worker.output.metadata import parquet_bytes, shard_table
    from dit_worker.output.parquet_images import image_parquet_bytes
    from dit_worker.storage.objects import open_storage

    store = open_storage(url)
    rng = np.random.default_rng(seed)
    images = [PNG.encode(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(DISTINCT_IMAGES)]
    hashes = [hashlib.sha256(data).hexdigest() for data in images]
    store.put(JOB_KEY, json.dumps({"synthetic": True, "num_samples": n, "shard_size": shard_size}).encode())
    for shard in range(-(-n // shard_size)):
        ids = np.arange(shard * shard_size, min(n, (shard + 1) * shard_size), dtype=np.int64)
        pick = (ids % DISTINCT_IMAGES).tolist()
        members = [member_name(int(i), PNG.extension) for i in ids]
        table = shard_table(
            shard, ids, (ids % NUM_CLASSES).astype(np.int32), ids, None, [f"{data_key(shard)}#{m}" for m in members],
            [hashes[k] for k in pick], [len(images[k]) for k in pick], side, _Row(),
        )  # fmt: skip
        store.put(data_key(shard), image_parquet_bytes(table, [images[k] for k in pick], members))
        store.put(part_key(shard), parquet_bytes(table))
    store.put(SUCCESS_KEY, json.dumps({"num_samples": n}).encode())


def peak_rss_mib() -> float | None:
    """This process's own peak resident memory (VmHWM in /proc/self/status). Not ru_maxrss: Linux
    keeps that across fork and exec, so a child would report its parent's peak when larger."""
    try:
        with open("/proc/self/status") as f:
            return round(next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024, 1)
    except (OSError, StopIteration):
        return None


def _peaks() -> dict[str, float | None]:
    return {
        "peak_rss_mib": peak_rss_mib(),
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _merged(url: str) -> tuple[Any, Any]:
    """The set opened and checked, then one synthetic feature part per shard merged; the merger is
    dropped on return, as `evaluation._collect` drops it."""
    from dit_worker.metrics.inception import LOGITS_DIM, POOL_DIM, SPATIAL_DIM
    from dit_worker.metrics.shard_statistics import ShardStatistics, StatisticsMerger
    from dit_worker.metrics.statistics import FeatureMoments
    from dit_worker.output.reader import OutputSet

    output = OutputSet.open(url)
    output.require_complete(allow_partial=False)
    output.check_unique_ids()
    output.image_size()
    rng = np.random.default_rng(1)
    pool_base = FeatureMoments.of(rng.random((64, POOL_DIM)))
    spatial_base = FeatureMoments.of(rng.random((64, SPATIAL_DIM)))
    merger = StatisticsMerger()
    for shard in output.iter_shards():
        n = len(shard)

        def moments(base: FeatureMoments, n: int = n) -> FeatureMoments:  # a part's own arrays, as from_bytes gives
            return FeatureMoments(n, base.total * (n / base.count), base.outer * (n / base.count))

        merger.add(
            ShardStatistics(
                weights_id="synthetic",
                sample_ids=shard.sample_ids,
                class_ids=shard.class_ids,
                pool=rng.random((n, POOL_DIM), dtype=np.float32),
                logits=rng.standard_normal((n, LOGITS_DIM), dtype=np.float32),
                pool_moments=moments(pool_base),
                spatial_moments=moments(spatial_base),
            )
        )
    return merger.result(), pool_base


def _fid_merge(url: str) -> dict[str, Any]:
    from dit_worker.metrics.frechet import frechet_distance
    from dit_worker.metrics.inception_score import inception_score

    merged, pool_base = _merged(url)
    is_mean, _ = inception_score(merged.logits)
    return {
        "samples": merged.count,
        "subsample": int(merged.sample_ids.shape[0]),
        "fid": round(frechet_distance(merged.pool_moments.gaussian(), pool_base.gaussian()), 6),
        "inception_score_mean": round(is_mean, 6),
    }


def child(kind: str, url: str, npz: str | None = None) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    start = time.perf_counter()
    if kind == "import":
        import dit_worker.metrics.evaluation
        import dit_worker.output.npz_export  # noqa: F401

        found: dict[str, Any] = {}
    elif kind == "open":
        from dit_worker.output.reader import OutputSet

        output = OutputSet.open(url)
        output.require_complete(allow_partial=False)
        output.check_unique_ids()
        output.image_size()
        found = {"samples": output.num_samples, "shards": output.num_shards, "labelled": output.labelled}
    elif kind == "export":
        from dit_worker.output.npz_export import export_set

        assert npz is not None
        found = export_set(url, Path(npz))
        found = {"samples": found["samples"], "npz_bytes": Path(npz).stat().st_size}
        Path(npz).unlink()
    elif kind == "fid-merge":
        found = _fid_merge(url)
    else:
        raise ValueError(f"unknown measurement {kind!r}; expected one of {', '.join(KINDS)}")
    return {"measure": kind, **found, "seconds": round(time.perf_counter() - start, 2), **_peaks()}


def measure(kind: str, url: str, npz: Path | None = None) -> dict[str, Any]:
    """`child(kind, ...)` in a fresh Python process; its JSON line back."""
    root = Path(__file__).resolve().parents[2]  # the folder that holds dit_worker/
    code = (
        "import json, sys\n"
        "from dit_worker.benchmarks.reader_memory import child\n"
        "print('RESULT ' + json.dumps(child(*sys.argv[1:])))\n"
    )
    args = [sys.executable, "-c", code, kind, url, *([str(npz)] if npz is not None else [])]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"{kind} on {url} failed (exit {run.returncode}): {run.stderr[-2000:]}")
    return json.loads(run.stdout.rsplit("RESULT ", 1)[1])


def reader_memory(
    work: Path, samples: int, *, scale: int = 10, shard_size: int = 1000, side: int = 8, keep: bool = False
) -> list[dict[str, Any]]:
    """Build sets of `samples` and `scale`·`samples` under `work` (reused when already there), measure
    every kind on each; one dict per (kind, size) with the peak's ratio to the smaller set's."""
    results: list[dict[str, Any]] = []
    sizes = (samples, scale * samples)
    try:
        built = {}
        for n in sizes:
            folder = work / f"set-{n}-{shard_size}-{side}"
            if not (folder / "_SUCCESS").is_file():
                shutil.rmtree(folder, ignore_errors=True)
                start = time.perf_counter()
                build_set(str(folder), n, shard_size=shard_size, side=side)
                print(f"built {folder} ({n} samples) in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            built[n] = folder
        for kind in KINDS:
            first = None
            for n in sizes:
                line = measure(kind, str(built[n]), work / f"export-{n}.npz" if kind == "export" else None)
                line = {"set_samples": n, "shard_size": shard_size, "side": side, **line}
                first = first or line["peak_rss_mib"]
                line["peak_vs_smaller_set"] = round(line["peak_rss_mib"] / first, 3) if first else None
                results.append(line)
                print(json.dumps(line), file=sys.stderr, flush=True)
    finally:
        if not keep:
            for n in sizes:
                shutil.rmtree(work / f"set-{n}-{shard_size}-{side}", ignore_errors=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per measurement, the import floor subtracted in its own column."""
    floor = {r["set_samples"]: r["peak_rss_mib"] for r in results if r["measure"] == "import"}
    lines = [
        "| measure | samples | peak RSS MiB | above import MiB | x smaller set | ru_maxrss MiB | s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        above = r["peak_rss_mib"] - floor.get(r["set_samples"], r["peak_rss_mib"])
        lines.append(
            f"| {r['measure']} | {r['set_samples']:,} | {r['peak_rss_mib']:.1f} | {above:.1f} | "
            f"{r['peak_vs_smaller_set']:.3f} | {r['ru_maxrss_mib']:.1f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)
