"""The report's score and duplicate sections (HTML): each float score's histogram, numbers and lowest and
highest samples, each classifier's top-label counts, and jobs.dedup's largest groups. Strings from the set
(label and column names, prompts, dedup.json's keys) go through `user_text`; element ids through `id_part`."""

from __future__ import annotations

from typing import Any

import numpy as np

from dit_worker.report.charts import histogram_svg, label_bars
from dit_worker.report.contents import ReportContents, Shown
from dit_worker.report.duplicates import Duplicates, Member
from dit_worker.report.score_columns import BINS, ScoreHistogram
from dit_worker.report.text import esc, id_part, user_text

CAPTION = 80  # characters of a prompt or class name under a thumbnail


class _Ids:
    """Element ids made of user strings: safe (`id_part`), and unique on the page (a repeat gets a counter)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def make(self, *parts: Any) -> str:
        base = "-".join(id_part(p) for p in parts)
        made, n = base, 1
        while made in self.used:
            n += 1
            made = f"{base}-{n}"
        self.used.add(made)
        return made


def value_text(value: float, dtype: str) -> str:
    """A stored score as its column holds it: the shortest digits that round-trip in its type."""
    return str(np.float32(value)) if dtype == "float32" else repr(float(value))


def _figure(shown: Shown | None, sample_id: int, value: str, extra: str = "") -> str:
    if shown is None:  # listed by the scores or dedup but not a committed sample
        caption = f"{value}: sample {sample_id} not committed"
        return f'<figure data-sample-id="{sample_id}"{extra}><figcaption>{caption}</figcaption></figure>'
    t = shown.thumb
    return (
        f'<figure data-sample-id="{sample_id}"{extra}><img loading="lazy" src="{esc(t.key)}" width="{t.width}" '
        f'height="{t.height}" alt="sample {sample_id}"><figcaption><span class="value">{value}</span> '
        f"#{sample_id} {user_text(shown.caption, CAPTION)}</figcaption></figure>"
    )


def _extremes(
    which: str, element_id: str, rows: list[tuple[float, int, int]], s: ScoreHistogram, c: ReportContents
) -> str:
    if not rows:
        return ""
    figures = "".join(_figure(c.shown.get(sid), sid, esc(value_text(v, s.dtype))) for v, sid, _ in rows)
    return f'<h4>{which}</h4><div class="row extremes" id="{esc(element_id)}">{figures}</div>'


def _score(s: ScoreHistogram, ids: _Ids, c: ReportContents) -> str:
    sid = ids.make(s.column) if s.label is None else ids.make(s.column, s.label_index, s.label)
    title = user_text(s.column) if s.label is None else f"{user_text(s.column)}: probability of {user_text(s.label)}"
    label = "" if s.label_index is None else f' data-label-index="{s.label_index}"'
    stats = (
        f'<span data-stat="count">{s.count}</span> samples, mean <span class="value" data-stat="mean">{s.mean!r}'
        f'</span>, min <span class="value" data-stat="min">{esc(value_text(s.min, s.dtype))}</span>, max '
        f'<span class="value" data-stat="max">{esc(value_text(s.max, s.dtype))}</span>; {BINS} equal bins from min '
        f"to max; from {user_text(s.source)}."
    )
    return (
        f'<div class="score" id="score-{esc(sid)}" data-column="{esc(s.column)}"{label}><h3>{title}</h3>'
        f"{histogram_svg('hist-' + sid, s.counts, s.edges)}<p>{stats}</p>"
        f"{_extremes(f'lowest {len(s.lowest)}', 'lowest-' + sid, s.lowest, s, c)}"
        f"{_extremes(f'highest {len(s.highest)}', 'highest-' + sid, s.highest, s, c)}</div>"
    )


def scores_section(c: ReportContents) -> str:
    """The "Scores" section, or "" for a set without scores."""
    if not c.scores and not c.label_counts:
        return ""
    ids = _Ids()
    parts = [_score(s, ids, c) for s in c.scores]
    for counts in c.label_counts:
        table = label_bars(ids.make("labels", counts.column), counts.labels, counts.other, counts.missing)
        parts.append(f'<div class="score-labels"><h3>{user_text(counts.column)}: top label</h3>{table}</div>')
    return f'<section id="scores"><h2>Scores</h2>{"".join(parts)}</section>'


def _member(m: Member, c: ReportContents) -> str:
    if m.dup_rank == 0:
        value = "kept"
    elif m.similarity is None:
        value = f"rank {m.dup_rank}"
    else:
        near = "" if m.nearest is None else f" to #{m.nearest}"
        value = f"{esc(str(np.float32(m.similarity)))}{near}"
    extra = f' data-dup-rank="{m.dup_rank}" data-similarity="{"" if m.similarity is None else repr(m.similarity)}"'
    return _figure(c.shown.get(m.sample_id), m.sample_id, value, extra)


def duplicates_section(c: ReportContents) -> str:
    """The "Duplicates" section (jobs.dedup's record and largest groups), or "" when the set has no dedup."""
    dup: Duplicates | None = c.duplicates
    if dup is None:
        return ""
    record = "".join(
        f'<tr><th>{user_text(k, 80)}</th><td class="value" data-dedup="{esc(id_part(k))}">{user_text(v, 80)}</td></tr>'
        for k, v in dup.record.items()
        if isinstance(v, (int, float, str, bool)) or v is None
    )
    groups = "".join(
        f'<div class="dup-group" data-group="{g.group}" data-size="{g.size}"><h3>group {g.group}: {g.size} '
        f'samples</h3><div class="row">{"".join(_member(m, c) for m in g.members)}</div></div>'
        for g in dup.groups
    )
    shown = f"The {len(dup.groups)} largest groups (ties by group id), up to 8 members each in dup_rank order, "
    shown += "each with its similarity to its nearest member (dedup's nearest)."
    return (
        f'<section id="duplicates"><h2>Duplicates</h2><table id="dedup-record">{record}</table>'
        f"<p>{shown if dup.groups else 'No group of more than one sample.'}</p>{groups}</section>"
    )
