"""python -m jobs.benchmark_readers: peak memory of OutputSet, jobs.export_npz and the jobs.fid merge at N
and at 10·N samples (dit_worker.benchmarks.reader_memory), each in a fresh process.

python -m jobs.benchmark_readers [--samples 50000] [--scale 10] [--shard-size 1000] [--side 8] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from dit_worker.benchmarks.conditions import machine_conditions
from dit_worker.benchmarks.reader_memory import reader_memory, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark_readers", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=50_000, help="the smaller set (default 50000, the subsample size)")
    p.add_argument("--scale", type=int, default=10, help="the larger set is this many times the smaller (default 10)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000, as jobs.generate)")
    p.add_argument("--side", type=int, default=8, help="image side in pixels (default 8)")
    p.add_argument("--work", help="folder for the sets and the .npz (default: a temporary folder, removed)")
    p.add_argument("--keep", action="store_true", help="keep the sets under --work for another run")
    p.add_argument("--max-growth", type=float, default=0.10, help="exit 1 when a peak grows more (default 0.10)")
    a = p.parse_args(argv)
    if a.samples < 1 or a.scale < 2 or a.shard_size < 1 or a.side < 1:
        print("error: --samples, --shard-size and --side must be >= 1, --scale >= 2", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dit-readers-") as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        conditions = machine_conditions("cpu")
        results = reader_memory(work, a.samples, scale=a.scale, shard_size=a.shard_size, side=a.side, keep=a.keep)
    command = " ".join(["python -m jobs.benchmark_readers", *(sys.argv[1:] if argv is None else argv)])
    print(json.dumps({"conditions": conditions, "command": command}))
    for line in results:
        print(json.dumps(line))
    print(table(results))
    grown = [r for r in results if r["peak_vs_smaller_set"] > 1 + a.max_growth]
    for r in grown:
        print(f"not flat: {r['measure']} at {r['set_samples']} samples, x{r['peak_vs_smaller_set']}", file=sys.stderr)
    return 1 if grown else 0


if __name__ == "__main__":
    sys.exit(main())
