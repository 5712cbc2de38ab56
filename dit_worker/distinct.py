"""Keys that must be distinct, checked in bounded memory however many there are: split by
partition where they are read (`split_keys`, in a task), appended per partition by one collector
(`DistinctKeys`: in memory up to IN_MEMORY_ROWS, then local files), each partition sorted alone.
Used for a manifest's sample ids, seeds and image keys, and for the sample ids of an output set.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

IN_MEMORY_ROWS = 1 << 19  # a check holds this many rows in memory before spilling to disk
PARTITION_ROWS = 1 << 21  # and spills so that a partition holds about this many (sorted alone: 48 MB)


def split_keys(keys: np.ndarray, ids: np.ndarray | None, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (keys [n, k], then the sample id that names them unless the key is the id) grouped by
    partition of their key: (rows, bounds) with partition p's rows at rows[bounds[p]:bounds[p + 1]].
    Computed where the rows are read, so the driver only appends each group to its partition."""
    rows = keys if ids is None else np.concatenate([keys, ids[:, None]], axis=1)
    mixed = np.zeros(len(keys), np.uint64)
    for col in range(keys.shape[1]):
        mixed ^= keys[:, col].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15 + 2 * col)  # Fibonacci hashing
    part = ((mixed >> np.uint64(32)) % np.uint64(partitions)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    return np.ascontiguousarray(rows[order]), np.searchsorted(part[order], np.arange(partitions + 1))


class DistinctKeys:
    """Finds a key that occurs twice among all rows, in bounded memory. Rows come split into
    `partitions` by key (split_keys); up to IN_MEMORY_ROWS in all are held in memory, beyond that
    each partition is appended to its own local file, and at the end one partition at a time is
    sorted (local disk: 8 bytes per key column and per id, per row)."""

    def __init__(self, partitions: int, key_columns: int, named: bool) -> None:
        self.partitions, self.key_columns = partitions, key_columns
        self.width = key_columns + int(named)
        self.held: list[list[np.ndarray]] = [[] for _ in range(partitions)]
        self.held_rows = 0
        self.spill: Path | None = None

    def add(self, rows: np.ndarray, bounds: np.ndarray) -> None:
        for p in range(self.partitions):
            if bounds[p + 1] > bounds[p]:
                self.held[p].append(rows[bounds[p] : bounds[p + 1]])
        self.held_rows += len(rows)
        if self.held_rows > IN_MEMORY_ROWS:
            self._spill()

    def _spill(self) -> None:
        if self.spill is None:
            self.spill = Path(tempfile.mkdtemp(prefix="manifest-distinct-"))
        for p, parts in enumerate(self.held):
            if parts:
                with open(self.spill / f"{p:05d}", "ab") as f:
                    for part in parts:
                        f.write(part.tobytes())
        self.held, self.held_rows = [[] for _ in range(self.partitions)], 0

    def first_repeat(self) -> tuple[tuple[int, ...], int, int] | None:
        """(key, first id, second id) of a repeated key (the smallest such key), or None; the ids
        are the key itself when rows carry no id."""
        try:
            found = []
            for p in range(self.partitions):
                rows = self._partition(p)
                if len(rows) and (hit := _repeat(rows, self.key_columns)) is not None:
                    found.append(hit)
            return min(found) if found else None
        finally:
            self.close()

    def _partition(self, p: int) -> np.ndarray:
        parts = [part.reshape(-1, self.width) for part in self.held[p]]
        if self.spill is not None and (path := self.spill / f"{p:05d}").exists():
            parts.append(np.fromfile(path, np.int64).reshape(-1, self.width))
        return np.concatenate(parts) if parts else np.zeros((0, self.width), np.int64)

    def close(self) -> None:
        if self.spill is not None:
            for path in self.spill.iterdir():
                path.unlink()
            os.rmdir(self.spill)
        self.spill, self.held = None, [[] for _ in range(self.partitions)]


def partitions_for(rows: int) -> int:
    """Partitions for a distinct-keys check over `rows` rows: PARTITION_ROWS each, at least one."""
    return max(1, -(-rows // PARTITION_ROWS))


def _repeat(rows: np.ndarray, key_columns: int) -> tuple[tuple[int, ...], int, int] | None:
    rows = rows[np.lexsort(rows.T[::-1])]  # by key columns, then id
    keys = rows[:, :key_columns]
    same = np.flatnonzero(np.all(keys[1:] == keys[:-1], axis=1))
    if not same.size:
        return None
    k = int(same[0])
    name = rows[:, -1]
    return tuple(map(int, keys[k])), int(name[k]), int(name[k + 1])
