"""python -m jobs.export_npz --out OUT --npz FILE: a generated set as the ADM evaluator's input.

FILE holds `arr_0` (uint8 [N, H, W, 3], ordered by sample_id), the sample batch format of
openai/guided-diffusion's `evaluations/evaluator.py`, plus `arr_1` (class ids, int64, same order)
as guided-diffusion's sampling script writes for class-conditional models; sets without class
ids (text-to-image, unconditional) have no `arr_1`, as guided-diffusion writes for unconditional
ones. Rows are streamed into
the file as they are read, so memory stays bounded by a shard, not by N.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from dit_worker.output.npz_stream import NpzStreamWriter
from dit_worker.output.reader import OutputSet, OutputSetError
from dit_worker.storage.objects import StorageError

log = logging.getLogger("jobs.export_npz")


def export_npz(output: OutputSet, path: Path) -> int:
    """Write `output` (already checked complete or allowed partial) to `path`; returns N."""
    output.check_unique_ids()
    height, width = output.image_size()
    n = output.num_samples
    labels = np.empty(n, np.int64)
    start = time.monotonic()
    with NpzStreamWriter(path) as npz:
        with npz.array("arr_0", (n, height, width, 3), np.uint8) as arr:
            for i, sample in enumerate(output.iter_samples()):
                arr.write(sample.image[None])
                labels[i] = sample.class_id
                if (i + 1) % 5000 == 0:
                    log.info("%d/%d images, %.0f s", i + 1, n, time.monotonic() - start)
        if output.labelled:
            npz.save("arr_1", labels)
    return n


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m jobs.export_npz", description=__doc__)
    p.add_argument("--out", required=True, help="generated set: local folder or s3://bucket/prefix")
    p.add_argument("--npz", required=True, help="local .npz file to write")
    p.add_argument("--allow-partial", action="store_true", help="export the committed shards of an unfinished set")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    a = p.parse_args(argv)
    if a.npz.startswith("s3://"):
        print(
            "error: --npz must be a local file (the archive is streamed to disk); copy it to S3 afterwards",
            file=sys.stderr,
        )
        return 2
    try:
        output = OutputSet.open(a.out, s3_endpoint=a.s3_endpoint)
        output.require_complete(a.allow_partial)
        n = export_npz(output, Path(a.npz))
    except (OutputSetError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    labels = ", arr_1 class ids" if output.labelled else ""
    log.info("wrote %s: arr_0 [%d, %d, %d, 3] uint8%s", a.npz, n, *output.image_size(), labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
