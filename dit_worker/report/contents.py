"""What the report shows, read from a set in the layout of docs/output.md: a few samples per class
or per prompt, metrics.json, job.json, the per-image scores (score_columns), jobs.dedup's largest
duplicate groups (duplicates) and the shards' commit times.

Only the chosen samples' images are read (at most MAX_GROUPS x PER_GROUP of them, plus the lowest and
highest EXTREMES of each float score and the shown duplicates, whatever the set's size), so the
report's size and cost are bounded: a 10,000- or a 10,000,000-image set gives the same few hundred
thumbnails.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from dit_worker.output.layout import JOB_KEY, PART_KEY, SUCCESS_KEY
from dit_worker.output.reader import OutputSet, Shard
from dit_worker.report.duplicates import Duplicates, read_duplicates
from dit_worker.report.score_columns import LabelCounts, ScoreHistogram, read_scores
from dit_worker.storage.objects import Storage, StorageError

METRICS_KEY = "metrics.json"  # written by jobs.fid (dit_worker.metrics.evaluation)
MAX_GROUPS = 32  # classes or prompts shown
PER_GROUP = 8  # samples per class or prompt
THUMB_SIDE = 128  # longest side of a thumbnail, pixels
THUMB_QUALITY = 85  # JPEG


@dataclass(frozen=True)
class Thumb:
    """One thumbnail the report shows: the sample it is of, where it is stored, and its JPEG bytes."""

    sample_id: int
    key: str  # relative to the report folder
    width: int
    height: int
    data: bytes


@dataclass(frozen=True)
class Group:
    """Samples shown together: one class, one prompt, or the whole set."""

    title: str  # "class 207 (golden retriever)", a prompt, or "all samples"
    count: int  # samples of the set in this group
    thumbs: list[Thumb]


@dataclass(frozen=True)
class Shown:
    """A sample shown outside the grid (a score's lowest or highest, a duplicate): its thumbnail and
    what it is of (its prompt, else its class)."""

    thumb: Thumb
    caption: str


@dataclass(frozen=True)
class Commit:
    """When a shard committed and how many samples it holds: the job's timing, read back."""

    time: float  # the metadata part's modification time: when the shard committed
    samples: int


@dataclass(frozen=True)
class ReportContents:
    """Everything `jobs.report` puts on its page, read from the set: groups of thumbnails, metrics, fingerprint,
    scores, duplicates, timing."""

    url: str
    num_samples: int
    num_shards: int
    complete: bool
    grouped_by: str  # "class", "prompt" or "none"
    groups: list[Group]
    job: dict[str, Any] | None
    metrics: dict[str, Any] | None
    scores: list[ScoreHistogram]  # one per float score (and shown classifier label); empty when the set has none
    label_counts: list[LabelCounts]  # one per classifier
    duplicates: Duplicates | None  # None without OUT/dedup/dedup.json
    shown: dict[int, Shown]  # sample id -> thumbnail, for the scores' extremes and the duplicates
    commits: list[Commit]
    success: dict[str, Any] | None

    def thumbs(self) -> list[Thumb]:
        """Every thumbnail the page links to, once each."""
        every = [t for g in self.groups for t in g.thumbs] + [s.thumb for s in self.shown.values()]
        return list({t.key: t for t in every}.values())


def _json(storage: Storage, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.get(key))
    except (StorageError, ValueError):
        return None


def _rows(shard: Shard, rows: list[int]) -> Shard:
    """The shard restricted to `rows`: reading it reads those images only."""
    pick = np.asarray(rows, np.int64)

    def take(values: tuple | None) -> tuple | None:
        return None if values is None else tuple(values[i] for i in rows)

    return replace(
        shard,
        sample_ids=shard.sample_ids[pick],
        class_ids=shard.class_ids[pick],
        image_keys=tuple(shard.image_keys[i] for i in rows),
        sha256=tuple(shard.sha256[i] for i in rows),
        heights=shard.heights[pick],
        widths=shard.widths[pick],
        class_names=take(shard.class_names),
        image_bytes=None if shard.image_bytes is None else shard.image_bytes[pick],
        prompts=take(shard.prompts),
    )


def choose_samples(output: OutputSet, max_groups: int, per_group: int) -> tuple[str, list[tuple[str, int, list]]]:
    """(grouped_by, [(title, count, [(shard position, row)])]): the first `per_group` samples (in
    sample_id order) of the first `max_groups` classes (by id) or prompts (by first appearance)."""
    by_class, by_prompt = output.labelled, output.prompted
    grouped_by = "class" if by_class else "prompt" if by_prompt else "none"
    found: dict[Any, tuple[str, list[int], list]] = {}
    order = sorted(
        ((int(sid), si, ri) for si, s in enumerate(output.shards) for ri, sid in enumerate(s.sample_ids.tolist()))
    )
    for _, si, ri in order:
        shard = output.shards[si]
        if by_class:
            key: Any = int(shard.class_ids[ri])
            name = shard.class_names[ri] if shard.class_names is not None else ""
            title = f"class {key}" + (f" ({name})" if name else "")
        elif by_prompt:
            assert shard.prompts is not None
            key = title = shard.prompts[ri]
        else:
            key, title = None, "all samples"
        if key not in found:
            if not by_class and len(found) >= max_groups:
                continue  # classes are all counted (shown by id); prompts in order of appearance
            found[key] = (title, [0], [])
        entry = found[key]
        entry[1][0] += 1
        if len(entry[2]) < (per_group if grouped_by != "none" else per_group * 8):
            entry[2].append((si, ri))
    keys = sorted(found) if by_class else list(found)
    return grouped_by, [(found[k][0], found[k][1][0], found[k][2]) for k in keys[:max_groups]]


def thumbnail(image: np.ndarray, sample_id: int) -> Thumb:
    img = Image.fromarray(image)
    scale = THUMB_SIDE / max(img.size)
    if scale < 1:  # smaller images stay as they are; the page scales them up, pixelated
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS
        )
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=THUMB_QUALITY)
    return Thumb(sample_id, f"thumbs/{sample_id:08d}.jpg", img.width, img.height, buf.getvalue())


def _commits(output: OutputSet) -> list[Commit]:
    sizes = {s.index: len(s) for s in output.shards}
    commits = []
    for info in output.storage.list("metadata/"):
        match = PART_KEY.match(info.key)
        if match and int(match.group(1)) in sizes:
            commits.append(Commit(info.modified, sizes[int(match.group(1))]))
    return sorted(commits, key=lambda c: c.time)


def _caption(shard: Shard, row: int) -> str:
    if shard.prompts is not None and shard.prompts[row]:
        return str(shard.prompts[row])
    name = shard.class_names[row] if shard.class_names is not None else ""
    cid = int(shard.class_ids[row])
    return (f"class {cid}" + (f" ({name})" if name else "")) if cid >= 0 else ""


def _wanted_rows(shards: dict[int, Shard], samples: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """{shard index: rows} of (shard index, sample id) pairs; a pair whose sample is not committed is left out."""
    rows: dict[int, set[int]] = {}
    for index, sample_id in samples:
        shard = shards.get(index)
        if shard is None:
            continue
        row = int(np.searchsorted(shard.sample_ids, sample_id))
        if row < len(shard) and int(shard.sample_ids[row]) == sample_id:
            rows.setdefault(index, set()).add(row)
    return {index: sorted(r) for index, r in rows.items()}


def read_contents(output: OutputSet, max_groups: int = MAX_GROUPS, per_group: int = PER_GROUP) -> ReportContents:
    grouped_by, chosen = choose_samples(output, max_groups, per_group)
    by_index = {s.index: s for s in output.shards}
    scores = read_scores(output)
    duplicates = read_duplicates(output)
    extra = [(shard, sid) for s in scores.scores for _, sid, shard in (*s.lowest, *s.highest)]
    if duplicates is not None:
        extra += [(m.shard, m.sample_id) for g in duplicates.groups for m in g.members]
    wanted: dict[int, set[int]] = {}
    for _, _, picks in chosen:
        for si, ri in picks:
            wanted.setdefault(output.shards[si].index, set()).add(ri)
    extra_rows = _wanted_rows(by_index, extra)
    for index, rows in extra_rows.items():
        wanted.setdefault(index, set()).update(rows)
    subsets = [_rows(by_index[index], sorted(rows)) for index, rows in sorted(wanted.items())]
    # Only these samples' images are read: the grid's, the scores' extremes and the shown duplicates.
    thumbs = {s.sample_id: thumbnail(s.image, s.sample_id) for s in output.iter_samples(subsets)}
    groups = [
        Group(title, count, [thumbs[int(output.shards[si].sample_ids[ri])] for si, ri in picks])
        for title, count, picks in chosen
    ]
    shown = {
        int(by_index[index].sample_ids[row]): Shown(
            thumbs[int(by_index[index].sample_ids[row])], _caption(by_index[index], row)
        )
        for index, rows in extra_rows.items()
        for row in rows
    }
    return ReportContents(
        url=output.url,
        num_samples=output.num_samples,
        num_shards=len(output.shards),
        complete=output.complete,
        grouped_by=grouped_by,
        groups=groups,
        job=_json(output.storage, JOB_KEY),
        metrics=_json(output.storage, METRICS_KEY),
        scores=scores.scores,
        label_counts=scores.label_counts,
        duplicates=duplicates,
        shown=shown,
        commits=_commits(output),
        success=_json(output.storage, SUCCESS_KEY),
    )
