"""Improved precision and recall (Kynkäänniemi et al. 2019) on Inception pool features.

As ADM's `ManifoldEstimator` (and torch-fidelity's `prc`): each set's manifold is the union of
balls around its feature vectors, each ball's radius being the distance to the k-th nearest
neighbour (k = 3) within the same set, the point itself excluded. Precision is the fraction of
generated samples inside the reference manifold; recall is the fraction of reference samples inside
the generated manifold. Distances are computed in blocks, so memory is rows x N, never N x N.

ADM computes the distance blocks in float16 (falling back to float32 on overflow); we use float32
throughout, which can flip a sample lying within ~1e-3 relative of a ball's edge.
"""

from __future__ import annotations

import numpy as np
import torch

NEIGHBOURHOOD = 3


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|^2 via norms and one matmul, clamped at 0 against rounding (ADM's formulation)."""
    d = (a * a).sum(1, keepdim=True) - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    return d.clamp_min_(0.0)


def knn_radii(features: torch.Tensor, k: int = NEIGHBOURHOOD, block: int = 1024) -> torch.Tensor:
    """Squared distance from each vector to its k-th nearest neighbour in the same set."""
    if features.shape[0] <= k:
        raise ValueError(f"k={k} nearest neighbours need more than {k} samples, got {features.shape[0]}")
    radii = []
    for rows in features.split(block):
        # The point itself is at distance 0, so the k-th neighbour is the (k+1)-th smallest value.
        radii.append(_squared_distances(rows, features).kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def fraction_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int = 1024) -> float:
    """Fraction of `points` within some ball (centre, radius) of the other set."""
    inside = [(_squared_distances(rows, centres) <= radii[None, :]).any(dim=1) for rows in points.split(block)]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    reference: np.ndarray,
    generated: np.ndarray,
    k: int = NEIGHBOURHOOD,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    ref = torch.as_tensor(np.asarray(reference, np.float32), device=device)
    gen = torch.as_tensor(np.asarray(generated, np.float32), device=device)
    precision = fraction_inside(gen, ref, knn_radii(ref, k))
    recall = fraction_inside(ref, gen, knn_radii(gen, k))
    return precision, recall
