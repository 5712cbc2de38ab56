"""What the report shows, read from a set in the layout of docs/output.md: a few samples per class
or per prompt, metrics.json, job.json, the CLIP scores and the shards' commit times.

Only the chosen samples' images are read (at most MAX_GROUPS x PER_GROUP of them, whatever the set's
size), so the report's size and cost are bounded: a 10,000- or a 10,000,000-image set gives the
same few hundred thumbnails.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dit_worker.metrics.embedding_statistics import CLIP, EmbeddingStatistics, embedding_key
from dit_worker.output.layout import JOB_KEY, PART_KEY, SUCCESS_KEY, part_key
from dit_worker.output.reader import OutputSet, Shard
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
class Commit:
    """When a shard committed and how many samples it holds: the job's timing, read back."""

    time: float  # the metadata part's modification time: when the shard committed
    samples: int


@dataclass(frozen=True)
class ReportContents:
    """Everything `jobs.report` puts on its page, read from the set: groups of thumbnails, metrics, fingerprint, CLIP
    scores, timing."""

    url: str
    num_samples: int
    num_shards: int
    complete: bool
    grouped_by: str  # "class", "prompt" or "none"
    groups: list[Group]
    job: dict[str, Any] | None
    metrics: dict[str, Any] | None
    clip_scores: np.ndarray | None  # per image; None when the set has none
    clip_scores_from: str  # where they came from
    commits: list[Commit]
    success: dict[str, Any] | None


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


def _clip_scores(output: OutputSet) -> tuple[np.ndarray | None, str]:
    """Per-image CLIP scores: the metadata's clip_score column (jobs.generate --score clip), else
    the CLIP parts jobs.fid --set-metrics stored (features/clip-part-*.npz)."""
    columns = []
    for shard in output.shards:
        table = pq.read_table(pa.BufferReader(output.storage.get(part_key(shard.index))))
        if "clip_score" not in table.column_names:
            columns = []
            break
        columns.append(table.column("clip_score").to_numpy(zero_copy_only=False).astype(np.float64))
    if columns:
        return np.concatenate(columns), "metadata column clip_score (jobs.generate --score clip)"
    parts = []
    for shard in output.shards:
        try:
            parts.append(EmbeddingStatistics.from_bytes(output.storage.get(embedding_key(CLIP, shard.index))).scores)
        except (StorageError, ValueError, KeyError):
            return None, ""
    scores = np.concatenate(parts) if parts else np.zeros(0)
    scores = scores[~np.isnan(scores)]
    return (scores, "features/clip-part-*.npz (jobs.fid --set-metrics clip_score)") if scores.size else (None, "")


def _commits(output: OutputSet) -> list[Commit]:
    sizes = {s.index: len(s) for s in output.shards}
    commits = []
    for info in output.storage.list("metadata/"):
        match = PART_KEY.match(info.key)
        if match and int(match.group(1)) in sizes:
            commits.append(Commit(info.modified, sizes[int(match.group(1))]))
    return sorted(commits, key=lambda c: c.time)


def read_contents(output: OutputSet, max_groups: int = MAX_GROUPS, per_group: int = PER_GROUP) -> ReportContents:
    grouped_by, chosen = choose_samples(output, max_groups, per_group)
    wanted: dict[int, list[int]] = {}
    for _, _, picks in chosen:
        for si, ri in picks:
            wanted.setdefault(si, []).append(ri)
    subsets = [_rows(output.shards[si], sorted(rows)) for si, rows in sorted(wanted.items())]
    thumbs = {s.sample_id: thumbnail(s.image, s.sample_id) for s in output.iter_samples(subsets)}
    groups = [
        Group(title, count, [thumbs[int(output.shards[si].sample_ids[ri])] for si, ri in picks])
        for title, count, picks in chosen
    ]
    scores, source = _clip_scores(output)
    return ReportContents(
        url=output.url,
        num_samples=output.num_samples,
        num_shards=len(output.shards),
        complete=output.complete,
        grouped_by=grouped_by,
        groups=groups,
        job=_json(output.storage, JOB_KEY),
        metrics=_json(output.storage, METRICS_KEY),
        clip_scores=scores,
        clip_scores_from=source,
        commits=_commits(output),
        success=_json(output.storage, SUCCESS_KEY),
    )
