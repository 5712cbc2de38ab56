"""The fixed subsample that the per-sample metrics use when a set is larger than their protocol.

FID, sFID and FD-DINOv2 merge exactly from per-shard sums (`statistics.FeatureMoments`), whatever the
set's size. The Inception Score (seeded splits), precision/recall and per-class FID (k-NN and SVDs over
samples) and CMMD (a kernel over every pair) need per-sample features; those are taken from a fixed
subsample of at most `size` samples per side (`SUBSAMPLE_SIZE`, FID-50K's count, for the Inception
metrics; `--cmmd-samples` for CMMD):

    the `size` samples of smallest `sample_key(sample_id)`, in sample_id order

where `sample_key` is splitmix64 of the id as an unsigned 64-bit integer (a bijection, so no ties
between distinct ids). A set of at most `size` samples is used whole, in sample_id order, exactly as
before the subsample existed. The choice depends on the sample ids only: not on shard order, the
number of workers, or the order in which parts arrive; the ids are scrambled by the hash, so the
subsample of a class-major set spreads evenly over its classes. It also merges: the smallest keys of
a union are the smallest keys among each part's smallest keys, so `Reservoir` keeps at most
`size` (plus a slack of `size // 8`) rows however many samples pass through it.
"""

from __future__ import annotations

import numpy as np

SUBSAMPLE_SIZE = 50_000  # the reference protocol's sample count (FID-50K, ADM's evaluator)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def sample_key(sample_ids: np.ndarray) -> np.ndarray:
    """splitmix64 (Steele, Lea and Flood 2014; Vigna's constants) of each id, as uint64."""
    z = np.asarray(sample_ids).astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def subsample_rows(sample_ids: np.ndarray, size: int) -> np.ndarray:
    """Ascending row indices of the subsample: every row when there are at most `size`."""
    n = int(np.asarray(sample_ids).shape[0])
    if n <= size:
        return np.arange(n)
    return np.sort(np.argpartition(sample_key(sample_ids), size - 1)[:size])


def _repeated(sample_ids: np.ndarray, keys: np.ndarray) -> list[int]:
    order = np.argsort(keys, kind="stable")
    same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    return sorted(set(sample_ids[order][same].tolist()))


class Reservoir:
    """The rows of the subsample of every row offered so far, in place.

    Usage::

        r = Reservoir(50_000)
        for part in parts:  # any order
            r.offer(part.sample_ids, {"pool": part.pool, "logits": part.logits})
        ids, columns = r.result()  # the subsample of all the parts' rows, by sample_id

    Columns are allocated once, at the first offer, for `size + size // 8` rows (pages are touched only
    as rows arrive, so a small set costs what it holds). Rows whose key is above the largest kept key
    are dropped on arrival; when the buffer fills, the rows beyond `size` are cut in place (moving at
    most the slack's rows). A sample id offered twice is refused (ValueError) when both copies reach the
    buffer, which is always the case for sets of at most `size` samples.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a subsample needs at least one row, got size {size}")
        self.size = size
        self.capacity = size + max(size // 8, 1024)
        self.seen = 0  # rows offered
        self._n = 0  # rows held
        self._bound: np.uint64 | None = None  # largest kept key, once `size` rows are kept
        self._ids = np.empty(0, np.int64)
        self._keys = np.empty(0, np.uint64)
        self._columns: dict[str, np.ndarray] = {}

    def offer(self, sample_ids: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        ids = np.asarray(sample_ids, np.int64)
        if any(len(c) != len(ids) for c in columns.values()):
            raise ValueError(f"{len(ids)} sample ids but columns of {[len(c) for c in columns.values()]} rows")
        if not self._columns:
            self._ids = np.empty(self.capacity, np.int64)
            self._keys = np.empty(self.capacity, np.uint64)
            self._columns = {k: np.empty((self.capacity, *c.shape[1:]), c.dtype) for k, c in columns.items()}
        elif set(columns) != set(self._columns):
            raise ValueError(f"columns {sorted(columns)}, expected {sorted(self._columns)}")
        self.seen += len(ids)
        keys = sample_key(ids)
        rows = np.arange(len(ids)) if self._bound is None else np.flatnonzero(keys <= self._bound)
        done = 0
        while done < rows.size:
            if self._n == self.capacity:
                self._cut()
            take = rows[done : done + self.capacity - self._n]
            end = self._n + take.size
            self._ids[self._n : end], self._keys[self._n : end] = ids[take], keys[take]
            for name, column in columns.items():
                self._columns[name][self._n : end] = column[take]
            self._n, done = end, done + take.size

    def _check(self) -> None:
        if repeated := _repeated(self._ids[: self._n], self._keys[: self._n]):
            raise ValueError(f"sample ids appear in more than one shard: {repeated[:5]}")

    def _cut(self) -> None:
        """Keep the `size` smallest keys in rows [0, size), moving only the kept rows that lie beyond."""
        self._check()
        if self._n <= self.size:
            return
        kept = np.zeros(self._n, bool)
        kept[np.argpartition(self._keys[: self._n], self.size - 1)[: self.size]] = True
        holes = np.flatnonzero(~kept[: self.size])
        movers = np.flatnonzero(kept[self.size :]) + self.size
        for array in (self._ids, self._keys, *self._columns.values()):
            array[holes] = array[movers]
        self._n = self.size
        self._bound = self._keys[: self.size].max()

    def result(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(sample_ids ascending, each column's rows in that order); empty when nothing was offered."""
        self._cut()
        order = np.argsort(self._ids[: self._n], kind="stable")
        return self._ids[order], {k: c[order] for k, c in self._columns.items()}
