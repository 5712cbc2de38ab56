"""CMMD (Jayasumana et al. 2024, "Rethinking FID: Towards a Better Evaluation Metric for Image
Generation"): the squared maximum mean discrepancy between the unit-normalised CLIP image
embeddings of two sets, with the Gaussian kernel k(x, y) = exp(-|x - y|² / (2σ²)), σ = 10, scaled
by 1000.

We use the unbiased estimator (the paper's claim): the within-set means leave out the k(x, x) = 1
diagonal, MMD² = mean_{i≠j} k(x_i, x_j) + mean_{i≠j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j), so its
expectation does not depend on the set sizes. Averaging over the full matrices instead (a
V-statistic) adds (1 - k̄_xx)/n + (1 - k̄_yy)/m. Computed in float64, in blocks (memory of one
block of kernel values, never n x n).

The kernel needs every pair, so it cannot be merged from per-shard sums like FD: each side is a
fixed subsample (`subsample`, the rule of `dit_worker.metrics.subsample`) of at most `max_samples`
embeddings.
"""

from __future__ import annotations

import numpy as np
import torch

from dit_worker.metrics.subsample import subsample_rows

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0
CMMD_MAX_SAMPLES = 10_000
BLOCK = 2048


def subsample(sample_ids: np.ndarray, max_samples: int = CMMD_MAX_SAMPLES) -> np.ndarray:
    """Row indices of the CMMD subsample of a set: every row when there are at most `max_samples`,
    else the `max_samples` rows of smallest splitmix64(sample_id) (`subsample.subsample_rows`), in
    ascending order. The merge (`embedding_statistics.EmbeddingMerger`) keeps exactly these rows."""
    return subsample_rows(sample_ids, max_samples)


def _unit(x: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=device)
    return t / torch.linalg.norm(t, dim=1, keepdim=True)


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, same: bool, sigma: float) -> float:
    """Sum of k(a_i, b_j) over all pairs (over i ≠ j when `same`)."""
    gamma = 1.0 / (2.0 * sigma**2)
    total = 0.0
    sq_b = (b * b).sum(1)
    for lo in range(0, a.shape[0], BLOCK):
        rows = a[lo : lo + BLOCK]
        d2 = ((rows * rows).sum(1)[:, None] + sq_b[None, :] - 2.0 * rows @ b.T).clamp_(min=0.0)
        k = torch.exp(-gamma * d2)
        if same:  # drop k(x_i, x_i)
            idx = torch.arange(rows.shape[0], device=a.device)
            k[idx, idx + lo] = 0.0
        total += float(k.sum())
    return total


def cmmd(
    x: np.ndarray, y: np.ndarray, *, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE, device: str | None = None
) -> float:
    """CMMD between embeddings x [n, d] and y [m, d] (normalised here), n, m >= 2."""
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"CMMD needs at least 2 embeddings per side, got {n} and {m}")
    dev = torch.device(device or "cpu")
    a, b = _unit(x, dev), _unit(y, dev)
    k_xx = _kernel_sum(a, a, True, sigma) / (n * (n - 1))
    k_yy = _kernel_sum(b, b, True, sigma) / (m * (m - 1))
    k_xy = _kernel_sum(a, b, False, sigma) / (n * m)
    return scale * (k_xx + k_yy - 2.0 * k_xy)
