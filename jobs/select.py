"""python -m jobs.select --out OUT --where EXPR --to OUT2 [--format F]: write the rows of a set that a filter
keeps as a new set (its own job.json naming the source and the filter), readable like any other.

EXPR is over the set's metadata columns, e.g. 'clip_score > 28 and class_id in (1, 3)' (docs/cli.md);
rows where it is null (a missing value) are not kept. After jobs.dedup, EXPR may name its columns
(`dup_rank == 0`: one image per near-duplicate group). Rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from dit_worker.curation.select import SelectConfig, run_select
from dit_worker.driver.config import describe_config_error
from dit_worker.output.reader import OutputSetError
from dit_worker.storage.objects import StorageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.select", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the set to select from: local folder or s3://bucket/prefix")
    p.add_argument("--where", required=True, help="filter over its metadata columns, e.g. 'clip_score > 28'")
    p.add_argument("--to", required=True, help="the new set: an empty local folder or s3:// prefix")
    p.add_argument("--format", help="png, webdataset or parquet (default: the source's)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    p.add_argument("--ray", action="store_true", help="select shards on Ray tasks (RAY_ADDRESS)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = SelectConfig(source=args.out, where=args.where, to=args.to, format=args.format,
                              s3_endpoint=args.s3_endpoint, ray=args.ray)  # fmt: skip
        summary = run_select(config)
    except ValidationError as err:
        print(f"error: {describe_config_error(err)}", file=sys.stderr)
        return 2
    except (OutputSetError, StorageError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
