"""The README's screenshot of a report: `python -m tests.report_screenshot docs/report.png`.

A synthetic 2,000-image set (tests/synthetic_sets.py, 32 px random blocks, a clip_score column) with
the metrics.json of a `jobs.fid --set-metrics all` run, reported by jobs.report and photographed in
Debian's chromium; the PNG is reduced to a 64-colour palette to stay small.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from PIL import Image
from synthetic_sets import write_synthetic_set
from test_report import METRICS, open_report

from dit_worker.storage.objects import open_storage
from jobs.report import main as report_main


def main(target: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set"
        write_synthetic_set(open_storage(str(out)), 2000, shard_size=100, side=32, num_classes=20)
        (out / "metrics.json").write_text(json.dumps(METRICS | {"num_samples": 2000}))
        assert report_main(["--out", str(out), "--max-groups", "6"]) == 0
        shot = Path(tmp) / "shot.png"
        open_report(out / "report" / "index.html", screenshot=shot, viewport=(1100, 1300))
        Image.open(shot).convert("RGB").quantize(64).save(target, optimize=True)
    print(target, Path(target).stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
