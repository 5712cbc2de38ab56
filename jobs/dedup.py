"""python -m jobs.dedup --out OUT [--threshold T] [--within prompt|class|set]: near-duplicate groups over a
set's CLIP image embeddings, written as OUT/dedup/part-<shard>.parquet (sample_id, group, group_size,
dup_rank, nearest, similarity) and OUT/dedup/dedup.json (docs/output.md); then
`jobs.select --where 'dup_rank == 0'` keeps one image per group. Rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from dit_worker.curation.dedup.config import DEFAULT_THRESHOLD, DedupConfig
from dit_worker.curation.dedup.run import run_dedup
from dit_worker.driver.config import describe_config_error
from dit_worker.storage.objects import StorageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.dedup", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the set: local folder or s3://bucket/prefix")
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"cosine at or above which two images are linked, in (0, 1] (default {DEFAULT_THRESHOLD})",
    )
    p.add_argument(
        "--within",
        help="prompt, class or set: which images are compared (default: prompt for text "
        "sets, class for class-conditional ones, else set)",
    )
    p.add_argument(
        "--clip-model",
        help="compute the embeddings with this CLIP (default: the stored clip_embedding "
        "column, else the project's default CLIP)",
    )
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    p.add_argument("--ray", action="store_true", help="run the steps on Ray tasks (RAY_ADDRESS)")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = DedupConfig(out=args.out, threshold=args.threshold, within=args.within, clip_model=args.clip_model,
                             s3_endpoint=args.s3_endpoint, ray=args.ray)  # fmt: skip
        summary = run_dedup(config)
    except ValidationError as err:
        print(f"error: {describe_config_error(err)}", file=sys.stderr)
        return 2
    except (StorageError, ValueError) as err:  # OutputSetError and MetricsInputError are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
