"""python -m jobs.benchmark_dedup: jobs.dedup's rows/s, peak memory and work-file bytes on sets of random
unit embeddings with planted near-duplicates (one JSON line per size).

python -m jobs.benchmark_dedup --rows 100000,1000000 --dim 768 --work /tmp/dedup-bench
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dit_worker.benchmarks.dedup import bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark_dedup", description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="100000,1000000", help="set sizes, comma-separated")
    p.add_argument("--dim", type=int, default=768, help="embedding width (ViT-L/14: 768)")
    p.add_argument("--shard-size", type=int, default=10_000, help="rows per source shard")
    p.add_argument("--rows-per-prompt", type=int, default=1000, help="rows compared together (one prompt)")
    p.add_argument("--planted", type=float, default=0.01, help="fraction of rows that are near-copies")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--work", default="dedup-bench", help="folder for the sets (kept and reused)")
    args = p.parse_args(argv)
    try:
        sizes = [int(float(r)) for r in args.rows.split(",")]
    except ValueError:
        print(f"error: --rows {args.rows!r}: expected comma-separated row counts", file=sys.stderr)
        return 2
    for rows in sizes:
        line = bench(Path(args.work), rows, args.dim, args.shard_size, args.rows_per_prompt, args.planted,
                     args.threshold)  # fmt: skip
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
