"""python -m jobs.benchmark_scale: the driver's costs at scale, without a model (one JSON line each).

python -m jobs.benchmark_scale --out s3://bucket/scale --committed 10000,100000 [--s3-endpoint URL]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dit_worker.benchmarks.scale import resume_cost
from dit_worker.storage.objects import StorageError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark_scale", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="local folder or s3://bucket/prefix to write the test outputs under")
    p.add_argument("--committed", default="10000,100000", help="committed shard counts, comma-separated")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
