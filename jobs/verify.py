"""python -m jobs.verify --out OUT [--full] [--repair] [--ray]: check a generated set's committed shards.

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

from dit_worker.execution.actors import PlacementError
from dit_worker.execution.tries import TaskFailed
from dit_worker.output.reader import OutputSetError
from dit_worker.output.verify import verify_output
from dit_worker.storage.objects import StorageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.verify", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="generated set: local folder or s3://bucket/prefix")
    p.add_argument("--full", "--verify", action="store_true", help="also check every image's sha256 (reads them)")
    p.add_argument("--repair", action="store_true", help="uncommit broken shards so the next run regenerates them")
    p.add_argument("--ray", action="store_true", help="check shards on Ray actors (RAY_ADDRESS), one per node's CPU")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        summary = verify_output(
            args.out, full=args.full, repair=args.repair, s3_endpoint=args.s3_endpoint, ray=args.ray
        )
    except (OutputSetError, StorageError, PlacementError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TaskFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for shard, problems in summary.pop("problems").items():
        print(f"shard {shard}: {'; '.join(problems)}", file=sys.stderr)
    print(json.dumps(summary))
    return 1 if summary["shards_broken"] and not summary["repaired"] else 0


if __name__ == "__main__":
    sys.exit(main())
