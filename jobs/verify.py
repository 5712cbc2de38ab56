"""python -m jobs.verify --out OUT [--full] [--repair]: check a generated set's committed shards.

Every object each metadata part names must exist with the recorded size (one listing per shard
folder); with --full (alias --verify) every image's sha256 is checked too. Broken shards are listed,
one line each. --repair takes the output's lease and uncommits them (removes `_SUCCESS`, then their
metadata parts), so rerunning the same jobs.generate command regenerates exactly those shards.
Exit status: 0 when every shard is intact (or was repaired), 1 when broken shards were found and
left as they are, 2 for a bad command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from dit_worker.driver.errors import JobError
from dit_worker.output.layout import committed_shards
from dit_worker.output.lease import DEFAULT_TTL_S, LeaseKeeper, acquire
from dit_worker.output.reader import OutputSetError
from dit_worker.output.verify import check_shards, uncommit
from dit_worker.shard import shard_name
from dit_worker.storage.objects import StorageError, open_storage


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.verify", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="generated set: local folder or s3://bucket/prefix")
    p.add_argument("--full", "--verify", action="store_true", help="also check every image's sha256 (reads them)")
    p.add_argument("--repair", action="store_true", help="uncommit broken shards so the next run regenerates them")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        storage = open_storage(args.out, s3_endpoint=args.s3_endpoint)
        shards = sorted(committed_shards(storage))
        if not shards:
            raise OutputSetError(f"{storage.url}: no committed shard (no metadata/part-*.parquet); nothing to verify")
        broken = [r for r in check_shards(storage, shards, full=args.full) if not r.ok]
        for report in broken:
            print(f"{shard_name(report.shard)}: {'; '.join(report.problems)}", file=sys.stderr)
        if broken and args.repair:
            with LeaseKeeper(acquire(storage, DEFAULT_TTL_S)):  # never while a job writes this output
                uncommit(storage, [r.shard for r in broken])
    except (OutputSetError, StorageError, JobError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "out": storage.url,
                "shards_checked": len(shards),
                "shards_broken": [r.shard for r in broken],
                "sha256_checked": args.full,
                "repaired": bool(broken and args.repair),
            }
        )
    )
    return 1 if broken and not args.repair else 0


if __name__ == "__main__":
    sys.exit(main())
