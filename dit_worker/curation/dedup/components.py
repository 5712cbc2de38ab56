"""Groups: connected components of the links, held as the linked samples only (memory grows with the
duplicates, never with the rows)."""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sample_id, group, size, rank) of every linked sample, in sample_id order: group is the smallest
    sample_id of its component, rank 0 for it and 1, 2, ... for the rest in sample_id order."""
    ids, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    if ids.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty.astype(np.int32), empty.astype(np.int32)
    n, m = ids.size, a.size
    graph = coo_matrix((np.ones(m, np.int8), (inverse[:m], inverse[m:])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    # ids ascend, so within a component (a stable sort by label) they ascend too: rank is the position.
    order = np.argsort(label, kind="stable")
    sorted_label = label[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_label[1:] != sorted_label[:-1]]))
    sizes = np.diff(np.concatenate([starts, [n]]))
    group = np.empty(n, np.int64)
    size = np.empty(n, np.int32)
    rank = np.empty(n, np.int32)
    group[order] = np.repeat(ids[order][starts], sizes)
    size[order] = np.repeat(sizes, sizes)
    rank[order] = np.arange(n) - np.repeat(starts, sizes)
    return ids, group, size, rank
