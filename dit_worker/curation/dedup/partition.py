"""Which rows are compared: buckets, and the exact partition of a whole set into k-means cells.

--within prompt / class: a row's bucket is its prompt (128 bits of blake2b) or class; every row of a
bucket is compared with every other. --within set: k-means cells, each vector copied into every cell
whose centroid is within its nearest centroid's distance + 2r, r the largest distance of two linked
vectors; a cell compares the rows it owns (nearest centroid) against all of its rows. With d(v) the
distance of v to its nearest centroid and o(v) that cell, for linked x, y (|x - y| <= r) the triangle
inequality gives
    d(x) <= |x - c_o(y)| <= |x - y| + d(y) <= r + d(y), and
    |y - c_o(x)| <= |y - x| + d(x) <= r + d(x) <= 2r + d(y),
so y is copied into o(x): every row linked to x is in the cell that owns x, which therefore finds all
of x's links and, when x's most similar row is linked to it, that row (the `nearest` column is exact
whenever its similarity reaches the threshold). A margin of r would still find every link (the pair
meets in the owner cell of whichever of x, y is nearer its centroid: |x - c_o(y)| <= r + d(y) <= r + d(x)
when d(y) <= d(x)), but not every row's nearest; below r links are lost.
"""

from __future__ import annotations

import hashlib
import math

import faiss
import numpy as np

# The stored vectors are float16 roundings of unit vectors: each component off by at most 2**-11
# relative, so |v|**2 <= (1 + 2**-11)**2 < (1 + 2**-10); and the distances below are float32 sums
# (DISTANCE_SLACK covers their rounding, far above float32's 1e-7 relative at distances <= 2).
NORM2_BOUND = (1 + 2**-10) ** 2
DISTANCE_SLACK = 1e-3
CELL_ROWS = 20_000  # rows per k-means cell when --within set names none (a cell's compare is quadratic)
MAX_CELLS = 4096
SAMPLE_PER_CELL = 64  # k-means training rows per cell (faiss warns below 39)
CHUNK = 16_384  # rows whose centroid distances are held at once


def prompt_key(prompt: str) -> tuple[int, int]:
    """Two int64 of blake2b-128: distinct prompts share a bucket with probability ~n**2 / 2**129."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=16).digest()
    hi, lo = np.frombuffer(digest, "<i8").tolist()
    return hi, lo


def partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    """int64 [n] partition of each (n, 2) bucket key: all rows of a bucket in one partition."""
    mixed = keys[:, 0].astype(np.uint64) ^ (keys[:, 1].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    return (mixed % np.uint64(partitions)).astype(np.int64)


def link_radius(threshold: float) -> float:
    """The largest |x - y| of two stored vectors with x . y >= threshold: |x|^2 + |y|^2 - 2 x.y."""
    return math.sqrt(max(2.0 * NORM2_BOUND - 2.0 * threshold, 0.0))


def cells_for(rows: int) -> int:
    return max(1, min(MAX_CELLS, rows // CELL_ROWS))


def train_cells(sample: np.ndarray, cells: int, seed: int = 1234) -> np.ndarray:
    """float32 [cells, dim] k-means centroids of `sample` (faiss.Kmeans, fixed seed: a rerun trains the same)."""
    cells = min(cells, sample.shape[0])
    if cells == 1:
        return sample.mean(0, keepdims=True).astype(np.float32)
    kmeans = faiss.Kmeans(sample.shape[1], cells, niter=20, seed=seed, verbose=False)
    kmeans.train(np.ascontiguousarray(sample, np.float32))
    return np.asarray(kmeans.centroids, np.float32)


def replicate(
    vectors: np.ndarray, centroids: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, cell, owner) for every copy: row i goes to each cell within its nearest distance + 2r."""
    margin = 2.0 * link_radius(threshold) + DISTANCE_SLACK
    c2 = (centroids.astype(np.float64) ** 2).sum(1).astype(np.float32)
    rows, cells, owners = [], [], []
    for lo in range(0, vectors.shape[0], CHUNK):
        x = vectors[lo : lo + CHUNK].astype(np.float32)
        d2 = (x * x).sum(1, keepdims=True) + c2[None, :] - 2.0 * (x @ centroids.T)
        d = np.sqrt(np.maximum(d2, 0.0))
        nearest = d.argmin(1)
        near = d <= d.min(1, keepdims=True) + margin
        r, c = np.nonzero(near)
        rows.append(r + lo)
        cells.append(c)
        owners.append(c == nearest[r])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    return np.concatenate(rows), np.concatenate(cells).astype(np.int64), np.concatenate(owners)
