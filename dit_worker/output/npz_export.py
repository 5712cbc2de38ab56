"""A generated set as the ADM evaluator's input (`python -m jobs.export_npz`): `arr_0` (uint8
[N, H, W, 3], ordered by sample_id), the sample batch format of openai/guided-diffusion's
`evaluations/evaluator.py`, plus `arr_1` (class ids, int64, same order) for class-conditional sets;
sets without class ids (text-to-image, unconditional) have no `arr_1`, as guided-diffusion writes
for unconditional models.

Memory is flat in N: images are streamed into `arr_0` as they are read (one shard's container and a
window of decoded images at a time, `OutputSet.iter_samples`), and the class ids, which the archive
stores after the images, are spooled to a temporary file beside FILE (8 bytes per sample on disk)
and copied into `arr_1` in chunks, never held as an array.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dit_worker.output.npz_stream import NpzStreamWriter
from dit_worker.output.reader import OutputSet, OutputSetError, batched

log = logging.getLogger(__name__)
WRITE_BYTES = 1 << 20  # images appended to arr_0 per write: about this many bytes (at least one image)
LABEL_CHUNK = 1 << 20  # bytes of class ids copied into arr_1 per write


def export_npz(output: OutputSet, path: Path) -> int:
    """Write `output` (already checked complete or allowed partial) to `path`; returns N."""
    output.check_unique_ids()
    height, width = output.image_size()
    n, labelled = output.num_samples, output.labelled
    start, done = time.monotonic(), 0
    with NpzStreamWriter(path) as npz, tempfile.TemporaryFile(dir=npz.tmp.parent, prefix=".arr_1-") as labels:
        with npz.array("arr_0", (n, height, width, 3), np.uint8) as arr:
            rows = max(1, WRITE_BYTES // (height * width * 3))
            for _, classes, images in batched(output.iter_samples(), rows):
                arr.write(images)
                labels.write(classes.astype(np.int64).tobytes())
                before, done = done, done + len(images)
                if done // 5000 > before // 5000:
                    log.info("%d/%d images, %.0f s", done, n, time.monotonic() - start)
        if labelled:
            labels.seek(0)
            with npz.array("arr_1", (n,), np.int64) as arr:
                while chunk := labels.read(LABEL_CHUNK):
                    arr.write(np.frombuffer(chunk, np.int64))
    return n


def export_set(url: str, npz: Path, *, allow_partial: bool = False, s3_endpoint: str | None = None) -> dict[str, Any]:
    """Export the set at `url` to the local file `npz`; returns what was written.

    Usage::

        export_set("s3://bucket/fid50k", Path("samples.npz"))  # {"npz": ..., "samples": 50000, ...}
    """
    if str(npz).startswith("s3://"):
        raise OutputSetError("--npz must be a local file (the archive is streamed to disk); copy it to S3 afterwards")
    output = OutputSet.open(url, s3_endpoint=s3_endpoint)
    output.require_complete(allow_partial)
    n = export_npz(output, npz)
    height, width = output.image_size()
    return {"npz": str(npz), "samples": n, "height": height, "width": width, "class_ids": output.labelled}
