"""A generated set as the ADM evaluator's input (`python -m jobs.export_npz`): `arr_0` (uint8
[N, H, W, 3], ordered by sample_id), the sample batch format of openai/guided-diffusion's
`evaluations/evaluator.py`, plus `arr_1` (class ids, int64, same order) for class-conditional sets;
sets without class ids (text-to-image, unconditional) have no `arr_1`, as guided-diffusion writes
for unconditional models. Rows are streamed into the file as they are read, so memory stays bounded
by a shard, not by N.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from dit_worker.output.npz_stream import NpzStreamWriter
from dit_worker.output.reader import OutputSet, OutputSetError

log = logging.getLogger(__name__)


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
