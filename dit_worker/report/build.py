"""Writing the report beside the set: OUT/report/index.html and OUT/report/thumbs/*.jpg."""

from __future__ import annotations

from dataclasses import dataclass

from dit_worker.output.reader import OutputSet
from dit_worker.report.contents import MAX_GROUPS, PER_GROUP, read_contents
from dit_worker.report.page import render

REPORT_PREFIX = "report/"


@dataclass(frozen=True)
class ReportSummary:
    """Where the report went and what it weighs."""

    index: str  # OUT/report/index.html, as a path or s3:// URL
    thumbnails: int
    bytes: int


def write_report(
    out: str,
    *,
    s3_endpoint: str | None = None,
    max_groups: int = MAX_GROUPS,
    per_group: int = PER_GROUP,
    command: str = "python -m jobs.report",
) -> ReportSummary:
    """Read the set at `out` (complete or not) and write its report under OUT/report/."""
    output = OutputSet.open(out, s3_endpoint=s3_endpoint)
    contents = read_contents(output, max_groups, per_group)
    thumbs = contents.thumbs()
    for thumb in thumbs:
        output.storage.put(REPORT_PREFIX + thumb.key, thumb.data)
    page = render(contents, command).encode()
    output.storage.put(REPORT_PREFIX + "index.html", page)
    size = sum(len(t.data) for t in thumbs) + len(page)
    return ReportSummary(output.storage.child(REPORT_PREFIX + "index.html"), len(thumbs), size)
