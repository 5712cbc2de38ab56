"""SVG and HTML charts of the report: a histogram of binned values and a bar list of label counts.
Numbers only go into the SVG; text from the set (a label's name) is placed by the caller, escaped."""

from __future__ import annotations

import numpy as np

from dit_worker.report.text import esc, user_text

WIDTH, HEIGHT = 640, 140  # the histogram's plot area, pixels
MAX_BARS = 20  # labels listed per classifier, the most frequent; the rest are summed in one line


def histogram_svg(svg_id: str, counts: np.ndarray, edges: np.ndarray) -> str:
    """One <rect> per bin (empty bins too), each with its count and edges as data attributes, so the page
    states the numbers it draws; `svg_id` must already be a safe id."""
    bar = WIDTH / len(counts)
    top = max(int(counts.max()), 1)
    bars = "".join(
        f'<rect x="{i * bar:.1f}" y="{HEIGHT - c / top * (HEIGHT - 10):.1f}" width="{bar - 1:.1f}" '
        f'height="{c / top * (HEIGHT - 10):.1f}" fill="#4a7ab5" data-count="{c}" '
        f'data-lo="{float(edges[i])!r}" data-hi="{float(edges[i + 1])!r}">'
        f"<title>{edges[i]:.4g} to {edges[i + 1]:.4g}: {c}</title></rect>"
        for i, c in enumerate(counts.tolist())
    )
    ticks = "".join(
        f'<text x="{i * bar:.1f}" y="{HEIGHT + 12}">{edges[i]:.4g}</text>' for i in range(0, len(counts), 8)
    )
    return f'<svg id="{esc(svg_id)}" width="{WIDTH}" height="{HEIGHT + 16}" role="img">{bars}{ticks}</svg>'


def label_bars(table_id: str, labels: list[tuple[str, int]], other: int, missing: int) -> str:
    """The labels' counts as a table of bars, most frequent first (ties in id order), at most MAX_BARS rows;
    each row carries its label's id (`data-label-index`) and count."""
    ranked = sorted(((c, j, name) for j, (name, c) in enumerate(labels) if c), key=lambda r: (-r[0], r[1]))
    top = max((c for c, _, _ in ranked), default=1)
    rows = "".join(
        f'<tr data-label-index="{j}" data-count="{c}"><td>{user_text(name, 80)}</td>'
        f'<td><svg width="{WIDTH // 2}" height="12"><rect width="{c / top * WIDTH / 2:.1f}" height="12" '
        f'fill="#b5794a"></rect></svg></td><td class="value">{c}</td></tr>'
        for c, j, name in ranked[:MAX_BARS]
    )
    rest = ranked[MAX_BARS:]
    notes = []
    if rest:
        notes.append(f"{len(rest)} more labels with {sum(c for c, _, _ in rest)} samples")
    if other:
        notes.append(f"{other} samples whose top label is none of the column's labels")
    if missing:
        notes.append(f"{missing} samples without a top label")
    never = sum(1 for _, c in labels if not c)
    if never:
        notes.append(f"{never} labels never on top")
    note = f"<p>{esc('; '.join(notes))}.</p>" if notes else ""
    return f'<table id="{esc(table_id)}" class="labels">{rows}</table>{note}'
