"""Inception Score (Salimans et al. 2016) from Inception-v3 logits.

As torch-fidelity's `isc` metric: the logits are the pool features times the classifier weights
without its bias ("logits_unbiased", which is also what ADM's evaluator feeds its softmax); the
samples are shuffled with a fixed seed (numpy RandomState(2020)) and cut into 10 splits at
i·N // 10; per split exp(mean KL(p(y|x) || p(y))) in float64; the result is the mean and the
population standard deviation over splits.

Why shuffle: ADM's evaluator cuts the .npz in file order, which is fine for DiT's sample_ddp.py
sets (random labels), but our fid50k sets are ordered by sample_id and may be grouped by class;
contiguous splits of a class-ordered set would each see ~100 classes and score far too low. The
seeded shuffle makes the score independent of the order while keeping the 10-split protocol.
"""

from __future__ import annotations

import numpy as np
import torch

SPLITS = 10
SHUFFLE_SEED = 2020


def inception_score(
    logits: np.ndarray, splits: int = SPLITS, shuffle_seed: int | None = SHUFFLE_SEED
) -> tuple[float, float]:
    """(mean, std) over `splits`; `logits` [N, C] in a fixed order (ours: by sample_id)."""
    n = int(logits.shape[0])
    if n < splits:
        raise ValueError(f"the Inception Score uses {splits} splits and needs at least {splits} samples, got {n}")
    x = torch.as_tensor(np.asarray(logits))
    if shuffle_seed is not None:
        x = x[np.random.RandomState(shuffle_seed).permutation(n)]
    x = x.double()
    p, log_p = x.softmax(dim=1), x.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_split, log_p_split = p[lo:hi], log_p[lo:hi]
        marginal = p_split.mean(dim=0, keepdim=True)
        kl = (p_split * (log_p_split - marginal.log())).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))
