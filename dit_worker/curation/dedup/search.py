"""One bucket's comparisons, by faiss: its owned rows against all of its rows, inner products of the
stored (float16 unit) vectors in float32."""

from __future__ import annotations

import faiss
import numpy as np


def bucket_pairs(
    vectors: np.ndarray, owner: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(link_q, link_m, nearest_q, nearest_m, nearest_sim): positions into the bucket's rows.

    Links: every (owned row q, row m != q) with vectors[q] . vectors[m] >= threshold (faiss range_search,
    whose bound is strict: the radius is the float32 just below the threshold, then `>=` decides).
    Nearest: each owned row's most similar other row (IndexFlatIP.search, k = 2: one of the two is not
    itself), -1 and NaN for a bucket of one row."""
    x = np.ascontiguousarray(vectors, np.float32)
    queries = np.flatnonzero(owner)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    q = np.ascontiguousarray(x[queries])
    t = np.float32(threshold)
    lims, sims, found = index.range_search(q, float(np.nextafter(t, np.float32(-np.inf))))
    query_of = np.repeat(queries, np.diff(lims.astype(np.int64)))
    keep = (sims >= t) & (found != query_of)
    k = min(2, x.shape[0])
    top_sims, top = index.search(q, k)
    if k < 2:
        alone = np.full(queries.size, -1, np.int64)
        return query_of[keep], found[keep], queries, alone, np.full(queries.size, np.nan, np.float32)
    first_other = top[:, 0] == queries  # the first result is the row itself: take the second
    pick = np.where(first_other, 1, 0)
    rows = np.arange(queries.size)
    return query_of[keep], found[keep], queries, top[rows, pick], top_sims[rows, pick].astype(np.float32)
