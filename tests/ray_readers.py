"""Run Ray Data readers as a driver of a Ray cluster and pickle the rows they return.

`python tests/ray_readers.py READS_JSON ROWS_PICKLE`, with RAY_ADDRESS set. READS_JSON lists
`{"name", "reader", "paths", "s3", "kwargs"}`; `reader` is a `ray.data.read_*` function, `s3` says
whether `paths` are "bucket/key" paths on the S3 endpoint of AWS_ENDPOINT_URL (credentials from
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), given to Ray as pyarrow's S3FileSystem. The rows
of each read (`take_all()`) are pickled as {name: rows}.

A process of its own: Ray decides at import whether a driver may connect over the loopback
address (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), and a test process stays free of Ray's global state.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from typing import Any


def main(reads_json: str, rows_pickle: str) -> None:
    import pyarrow.fs as pafs
    import ray
    import ray.data

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="warning")
    ray.data.DataContext.get_current().enable_progress_bars = False
    s3 = pafs.S3FileSystem(
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        endpoint_override=os.environ.get("AWS_ENDPOINT_URL"),
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    out: dict[str, list[dict[str, Any]]] = {}
    with open(reads_json) as f:
        reads = json.load(f)
    for read in reads:
        reader = getattr(ray.data, read["reader"])
        filesystem = s3 if read["s3"] else pafs.LocalFileSystem()
        out[read["name"]] = reader(read["paths"], filesystem=filesystem, **read["kwargs"]).take_all()
    with open(rows_pickle, "wb") as f:
        pickle.dump(out, f)
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
