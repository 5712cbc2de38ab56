"""Scan manifests with Ray tasks as a driver of a Ray cluster and write what came out as JSON.

`python tests/ray_scan.py SCANS_JSON OUT_JSON`, with RAY_ADDRESS (and, for s3:// manifests, the
AWS_* variables) set. SCANS_JSON maps a name to a manifest spec; each is scanned with
`scan_files(..., local=False)`, every file a task. OUT_JSON maps each name to its identity, row
count and first rows (or its error), and "tasks" to the number of Ray tasks run per function.

A process of its own: a test process stays free of Ray's global state.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter


def main(scans_json: str, out_json: str) -> None:
    import ray
    from checkpoints import id2label
    from ray.util.state import list_tasks

    from dit_worker.labels import ClassNames
    from dit_worker.manifest.files import ManifestError
    from dit_worker.manifest.scan import scan_files

    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}  # as `ray job submit` would pass them
    ray.init(
        address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="warning", runtime_env={"env_vars": aws}
    )
    names = ClassNames(id2label(), 1000)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    out: dict[str, dict] = {}
    with open(scans_json) as f:
        scans = json.load(f)
    for name, spec in scans.items():
        try:
            manifest = scan_files(
                spec, names, "class", s3_endpoint=endpoint, local=False, parallel_bytes=0, piece_rows=1 << 16,
                piece_bytes=0,
            )  # fmt: skip
            first = manifest.rows(65_530, 65_540).load().sample_id.tolist()
            out[name] = {"identity": manifest.identity, "rows": manifest.num_rows, "first": first}
        except ManifestError as err:
            out[name] = {"error": str(err)}

    def ran() -> dict[str, int]:
        return dict(Counter(t.name for t in list_tasks(filters=[("type", "=", "NORMAL_TASK")], limit=10_000)))

    seen, deadline = ran(), time.monotonic() + 30
    while time.monotonic() < deadline:  # task events reach the state API a little later: wait until they settle
        time.sleep(2)
        if (now := ran()) == seen:
            break
        seen = now
    out["tasks"] = seen
    with open(out_json, "w") as f:
        json.dump(out, f)
    ray.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1], sys.argv[2])
