"""The report's view of `jobs.dedup`'s output (OUT/dedup/, documented where jobs.dedup lives):
`dedup.json` (threshold, within, counts) and `dedup/part-<shard:05d>.parquet`, one per source shard,
one row per sample: sample_id int64, group int64 (the smallest sample_id of its group), group_size
int32, dup_rank int32 (0 = kept), nearest int64 and similarity float32 (the most similar other sample;
null when there is none).

Two streaming passes over the parts: the first reads group, group_size and dup_rank and keeps the
MAX_GROUPS largest groups (one row per group: its dup_rank 0 member), ties by group id; the second
reads only those groups' members of dup_rank < PER_GROUP. Memory: one part's columns plus
MAX_GROUPS x PER_GROUP members, whatever the set's size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dit_worker.output.dedup_layout import DEDUP_JSON, DEDUP_PREFIX, dedup_key
from dit_worker.output.reader import OutputSet, OutputSetError
from dit_worker.report.ranking import SmallestK
from dit_worker.storage.objects import Storage, StorageError

DEDUP_PART = re.compile(rf"^{re.escape(DEDUP_PREFIX)}(\d+)\.parquet$")
MAX_GROUPS = 8  # duplicate groups shown, the largest
PER_GROUP = 8  # members shown per group, in dup_rank order


@dataclass(frozen=True)
class Member:
    """One sample of a duplicate group as the report shows it."""

    sample_id: int
    shard: int  # the source shard it lies in (its dedup part's index)
    dup_rank: int
    nearest: int | None
    similarity: float | None


@dataclass(frozen=True)
class DuplicateGroup:
    """A group of near-duplicates: its id (smallest member id), size, and its first members by dup_rank."""

    group: int
    size: int
    members: list[Member]


@dataclass(frozen=True)
class Duplicates:
    """What jobs.dedup found: its record (dedup.json) and the largest groups."""

    record: dict[str, Any]
    groups: list[DuplicateGroup]


def _parts(storage: Storage, columns: list[str]) -> Iterator[tuple[int, pa.Table]]:
    listed = storage.list(DEDUP_PREFIX)  # the parts only, not dedup/work/
    indices = sorted(int(m.group(1)) for info in listed if (m := DEDUP_PART.match(info.key)))
    for index in indices:
        key = dedup_key(index)
        try:
            # use_threads=False: a few columns need no decode threads, and with torch loaded pyarrow's
            # threads made 1 in 16 to 1 in 8 exits abort ('terminate called without an active exception').
            yield index, pq.ParquetFile(storage.open_object(key)).read(columns=columns, use_threads=False)
        except (pa.ArrowException, OSError, KeyError) as err:
            raise OutputSetError(f"{storage.child(key)}: not a readable dedup part ({err})") from None


def _ints(column: pa.ChunkedArray) -> np.ndarray:
    """int64 values, -1 for a null (no group id, size or rank is negative)."""
    return np.asarray(column.fill_null(-1).to_numpy(), np.int64)


def _optional(column: pa.ChunkedArray, cast: type) -> list[Any]:
    return [None if v is None else cast(v) for v in column.to_pylist()]


def read_duplicates(output: OutputSet, max_groups: int = MAX_GROUPS, per_group: int = PER_GROUP) -> Duplicates | None:
    """None unless OUT/dedup/dedup.json exists; else its record and the `max_groups` largest groups of
    more than one sample (ties by group id), each with its first `per_group` members by dup_rank."""
    try:
        record = json.loads(output.storage.get(DEDUP_JSON))
    except StorageError:
        return None
    except ValueError as err:
        raise OutputSetError(f"{output.storage.child(DEDUP_JSON)}: not JSON ({err})") from None
    largest = SmallestK(max_groups)
    for _, table in _parts(output.storage, ["group", "group_size", "dup_rank"]):  # first pass: sizes
        sizes, groups, ranks = (_ints(table[c]) for c in ("group_size", "group", "dup_rank"))
        kept = (ranks == 0) & (sizes > 1)  # one row per group of two or more: its kept member
        largest.offer(-sizes[kept].astype(np.float64), groups[kept], np.zeros(int(kept.sum()), np.int64))
    chosen = {g: int(-s) for s, g, _ in largest.rows()}
    members: dict[int, list[Member]] = {g: [] for g in chosen}
    wanted = np.fromiter(chosen, np.int64, len(chosen))
    columns = ["sample_id", "group", "dup_rank", "nearest", "similarity"]
    for shard, table in _parts(output.storage, columns) if chosen else ():  # second pass: their members
        rows_of = np.flatnonzero(np.isin(_ints(table["group"]), wanted) & (_ints(table["dup_rank"]) < per_group))
        table = table.take(pa.array(rows_of))
        rows = zip(
            table["sample_id"].to_pylist(), table["group"].to_pylist(), table["dup_rank"].to_pylist(),
            _optional(table["nearest"], int), _optional(table["similarity"], float), strict=True,
        )  # fmt: skip
        for sample_id, group, rank, nearest, similarity in rows:
            members[int(group)].append(Member(int(sample_id), shard, int(rank), nearest, similarity))
    shown = [
        DuplicateGroup(g, size, sorted(members[g], key=lambda m: (m.dup_rank, m.sample_id))[:per_group])
        for g, size in chosen.items()
    ]
    return Duplicates(record if isinstance(record, dict) else {}, shown)
