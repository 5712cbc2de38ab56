"""python -m jobs.report --out OUT: a static HTML page beside a generated set, OUT/report/index.html.

Sample grids per class or per prompt (thumbnails in OUT/report/thumbs/), the metrics of
OUT/metrics.json with the command that made them and the job's fingerprint, a histogram of each
per-image score with its lowest and highest samples, jobs.dedup's largest duplicate groups where
OUT/dedup/ exists, and images/s over time from the shards' commit times. Relative
links only: open it from the folder, or from S3 (a presigned URL per object, or a website bucket).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict

from dit_worker.output.reader import OutputSetError
from dit_worker.report.build import write_report
from dit_worker.report.contents import MAX_GROUPS, PER_GROUP
from dit_worker.storage.objects import StorageError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__)
    p.add_argument("--out", required=True, help="the generated set: local folder or s3://bucket/prefix")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    p.add_argument(
        "--max-groups", type=int, default=MAX_GROUPS, help=f"classes or prompts shown (default {MAX_GROUPS})"
    )
    p.add_argument(
        "--per-group", type=int, default=PER_GROUP, help=f"samples per class or prompt (default {PER_GROUP})"
    )
    a = p.parse_args(argv)
    for flag, value in (("--max-groups", a.max_groups), ("--per-group", a.per_group)):
        if not 1 <= value <= 1000:
            print(f"error: {flag} {value}: expected 1 to 1000", file=sys.stderr)
            return 2
    command = shlex.join(["python", "-m", "jobs.report", *(sys.argv[1:] if argv is None else argv)])
    try:
        summary = write_report(
            a.out, s3_endpoint=a.s3_endpoint, max_groups=a.max_groups, per_group=a.per_group, command=command
        )
    except (OutputSetError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
