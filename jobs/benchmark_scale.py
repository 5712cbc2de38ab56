"""python -m jobs.benchmark_scale: the driver's costs at scale, without a model (one JSON line each).

python -m jobs.benchmark_scale --out s3://bucket/scale --committed 10000,100000 [--s3-endpoint URL]
python -m jobs.benchmark_scale --plan classes:1e9,class-parquet:1e7,prompt-parquet:1e7 --work /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dit_worker.benchmarks.scale import PLAN_KINDS, build_manifest, plan_cost, resume_cost
from dit_worker.storage.objects import StorageError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark_scale", description=__doc__.split("\n")[0])
    p.add_argument("--out", help="resume: local folder or s3://bucket/prefix to write the test outputs under")
    p.add_argument("--committed", default="10000,100000", help="resume: committed shard counts, comma-separated")
    p.add_argument("--plan", help=f"plan: KIND:ROWS,... with KIND one of {', '.join(PLAN_KINDS)} (ROWS may be 1e9)")
    p.add_argument("--work", default="scale-manifests", help="plan: folder for the manifests it builds (reused)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    args = p.parse_args(argv)
    if args.plan:
        return plan(args.plan, Path(args.work))
    if not args.out:
        print("error: give --out (resume costs) or --plan (planning costs)", file=sys.stderr)
        return 2
    try:
        counts = [int(c) for c in args.committed.split(",")]
    except ValueError:
        print(f"error: --committed {args.committed!r}: expected comma-separated shard counts", file=sys.stderr)
        return 2
    try:
        for n in counts:
            line = resume_cost(args.out, n, args.s3_endpoint)
            print(json.dumps(line | {"cores": os.cpu_count(), "load_average": os.getloadavg()}), flush=True)
    except StorageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def plan(spec: str, work: Path) -> int:
    try:
        cases = [(kind, int(float(rows))) for kind, rows in (c.split(":") for c in spec.split(","))]
    except ValueError:
        print(f"error: --plan {spec!r}: expected KIND:ROWS,... such as classes:1e9", file=sys.stderr)
        return 2
    if bad := [k for k, _ in cases if k not in PLAN_KINDS]:
        print(f"error: --plan: unknown kind {bad[0]!r}; use one of {', '.join(PLAN_KINDS)}", file=sys.stderr)
        return 2
    # Each measurement in a fresh process (its own peak RSS), not a daemon: the scan starts its tasks' processes.
    spawn = multiprocessing.get_context("spawn")
    for kind, rows in cases:
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            pool.submit(build_manifest, kind, rows, work).result()
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            line = pool.submit(plan_cost, kind, rows, work).result()
        print(json.dumps(line | {"cores": os.cpu_count(), "load_average": os.getloadavg()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
