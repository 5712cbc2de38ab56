"""python -m jobs.export_npz --out OUT --npz FILE: a generated set as the ADM evaluator's input
(`arr_0` images by sample_id, `arr_1` class ids where the set has them; dit_worker.output.npz_export)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dit_worker.output.npz_export import export_set
from dit_worker.output.reader import OutputSetError
from dit_worker.storage.objects import StorageError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m jobs.export_npz", description=__doc__)
    p.add_argument("--out", required=True, help="generated set: local folder or s3://bucket/prefix")
    p.add_argument("--npz", required=True, help="local .npz file to write")
    p.add_argument("--allow-partial", action="store_true", help="export the committed shards of an unfinished set")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    a = p.parse_args(argv)
    try:
        written = export_set(a.out, Path(a.npz), allow_partial=a.allow_partial, s3_endpoint=a.s3_endpoint)
    except (OutputSetError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
