"""Mergeable first and second moments of feature vectors, in float64.

Each shard contributes (n, sum x, sum x x^T); moments of disjoint shards merge by addition, so the
merged mean and covariance equal those computed over all features at once, whatever the shard
sizes, their order or the number of workers. The covariance is the unbiased one (divide by n - 1),
as `np.cov` in the ADM evaluator and torch-fidelity.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from dit_worker.metrics.frechet import Gaussian


@dataclass(frozen=True)
class FeatureMoments:
    """Sums that merge by addition (count, sum of x, sum of x xᵀ in float64): a Gaussian's mean and covariance without
    holding the samples."""

    count: int
    total: np.ndarray  # [D] float64, sum of x
    outer: np.ndarray  # [D, D] float64, sum of x x^T

    @classmethod
    def zeros(cls, dim: int) -> FeatureMoments:
        return cls(0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureMoments:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"expected features [N, D], got shape {x.shape}")
        return cls(int(x.shape[0]), x.sum(axis=0), x.T @ x)

    @property
    def dim(self) -> int:
        return int(self.total.shape[0])

    def __add__(self, other: FeatureMoments) -> FeatureMoments:
        if self.dim != other.dim:
            raise ValueError(f"cannot merge moments of {self.dim}- and {other.dim}-dimensional features")
        return FeatureMoments(self.count + other.count, self.total + other.total, self.outer + other.outer)

    def gaussian(self) -> Gaussian:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        mu = self.total / self.count
        sigma = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return Gaussian(mu, (sigma + sigma.T) / 2)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """For .npz: the symmetric outer-product sum is stored as its upper triangle (half the bytes)."""
        rows, cols = np.triu_indices(self.dim)
        return {
            f"{prefix}_count": np.asarray(self.count, np.int64),
            f"{prefix}_total": self.total,
            f"{prefix}_outer_triu": self.outer[rows, cols],
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> FeatureMoments:
        total = np.asarray(arrays[f"{prefix}_total"], np.float64)
        dim = total.shape[0]
        outer = np.zeros((dim, dim), np.float64)
        rows, cols = np.triu_indices(dim)
        outer[rows, cols] = arrays[f"{prefix}_outer_triu"]
        outer[cols, rows] = outer[rows, cols]
        return cls(int(arrays[f"{prefix}_count"]), total, outer)


class MomentSums:
    """FeatureMoments added in place: one [D] and one [D, D] float64 buffer, however many parts are added.

    Usage::

        sums = MomentSums(2048)
        for part in parts:
            sums.add(part.pool_moments)
        sums.moments().gaussian()
    """

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.total = np.zeros(dim, np.float64)
        self.outer = np.zeros((dim, dim), np.float64)

    def add(self, moments: FeatureMoments) -> None:
        if moments.dim != self.total.shape[0]:
            raise ValueError(f"cannot merge moments of {self.total.shape[0]}- and {moments.dim}-dimensional features")
        self.count += moments.count
        self.total += moments.total
        self.outer += moments.outer

    def moments(self) -> FeatureMoments:
        """The sums so far (sharing this accumulator's buffers: add nothing after taking them)."""
        return FeatureMoments(self.count, self.total, self.outer)


def versioned_npz(version: int, **arrays: np.ndarray) -> bytes:
    """One .npz holding `arrays` and `format_version`: how the per-shard statistics files are written."""
    buf = io.BytesIO()
    np.savez(buf, format_version=np.asarray(version), **arrays)
    return buf.getvalue()


def read_versioned_npz(data: bytes, version: int, what: str) -> dict[str, np.ndarray]:
    """The arrays of a `versioned_npz` file, refusing (ValueError) one of another format version."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    found = int(arrays.get("format_version", -1))
    if found != version:
        raise ValueError(f"{what} format {found}, expected {version}")
    return arrays
