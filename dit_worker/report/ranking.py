"""Bounded rankings kept while streaming over a set's parts: the k smallest keys seen so far, ties
broken by an id, so the result is the same whatever the order of the parts."""

from __future__ import annotations

import numpy as np


class SmallestK:
    """The `k` rows of smallest (key, id) among every row offered, with a payload per row (e.g. the
    shard a sample lies in). Memory: k rows plus the chunk being offered, whatever the stream's length."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.keys = np.zeros(0, np.float64)
        self.ids = np.zeros(0, np.int64)
        self.payload = np.zeros(0, np.int64)

    def offer(self, keys: np.ndarray, ids: np.ndarray, payload: np.ndarray) -> None:
        keys = np.concatenate([self.keys, np.asarray(keys, np.float64)])
        ids = np.concatenate([self.ids, np.asarray(ids, np.int64)])
        payload = np.concatenate([self.payload, np.asarray(payload, np.int64)])
        order = np.lexsort((ids, keys))[: self.k]  # by key, then id: deterministic among equal keys
        self.keys, self.ids, self.payload = keys[order], ids[order], payload[order]

    def rows(self) -> list[tuple[float, int, int]]:
        """(key, id, payload), smallest first."""
        return list(zip(self.keys.tolist(), self.ids.tolist(), self.payload.tolist(), strict=True))
