"""Inception Score and precision/recall equal torch-fidelity's own functions on the same features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_prc import calculate_precision_recall_full, calculate_precision_recall_part

from dit_worker.metrics.inception_score import inception_score
from dit_worker.metrics.precision_recall import precision_recall


@pytest.mark.parametrize("n", [20, 103, 1000])
def test_inception_score_equals_torch_fidelity(n: int) -> None:
    rng = np.random.default_rng(n)
    # Logits with a per-sample preferred class, so the score is far from 1 and the splits differ.
    logits = rng.standard_normal((n, 1008)).astype(np.float32)
    logits[np.arange(n), rng.integers(0, 50, n)] += 6.0
    expected = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    mean, std = inception_score(logits)
    assert mean > 1.2 and std > 0.0
    assert mean == pytest.approx(expected["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(expected["inception_score_std"], rel=1e-9)


def test_inception_score_does_not_depend_on_class_order() -> None:
    """Our sets may be sorted by class; the seeded shuffle keeps the splits mixed (ADM cuts in file order)."""
    rng = np.random.default_rng(0)
    classes = np.repeat(np.arange(100), 10)  # class-sorted, as a fid50k set ordered by sample_id may be
    logits = rng.standard_normal((1000, 1008)).astype(np.float32)
    logits[np.arange(1000), classes] += 8.0
    shuffled, _ = inception_score(logits)
    in_file_order, _ = inception_score(logits, shuffle_seed=None)
    assert shuffled > 2 * in_file_order  # contiguous splits see 10 classes each and score far too low


@pytest.mark.parametrize(("n_ref", "n_gen", "d"), [(60, 45, 2048), (300, 200, 64)])
def test_precision_recall_equal_torch_fidelity(n_ref: int, n_gen: int, d: int) -> None:
    rng = np.random.default_rng(d)
    # 8 intrinsic dimensions embedded in d: in a truly d-dimensional cloud all distances concentrate.
    embed = rng.standard_normal((8, d)) / np.sqrt(8)
    ref = (rng.standard_normal((n_ref, 8)) @ embed).astype(np.float32)
    # Generated: half near reference points, half in a shifted blob, so neither value is 0 or 1.
    near = rng.standard_normal((n_gen // 2, 8)) * 0.8
    off = rng.standard_normal((n_gen - n_gen // 2, 8)) * 0.5 + 2.5
    gen = (np.concatenate([near, off]) @ embed).astype(np.float32)
    precision, recall = precision_recall(ref, gen)
    # torch-fidelity's convention: features_1 generated, features_2 real; it averages in float32.
    full = calculate_precision_recall_full(torch.from_numpy(gen), torch.from_numpy(ref), neighborhood=3)
    part = calculate_precision_recall_part(torch.from_numpy(gen), torch.from_numpy(ref), neighborhood=3, batch_size=16)
    assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0
    assert (precision, recall) == pytest.approx(full, abs=1e-6)
    assert (precision, recall) == pytest.approx(part, abs=1e-6)


def test_precision_recall_block_size_does_not_matter() -> None:
    from dit_worker.metrics.precision_recall import fraction_inside, knn_radii

    rng = np.random.default_rng(3)
    a = torch.from_numpy(rng.standard_normal((70, 32)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal((50, 32)).astype(np.float32) + 0.2)
    torch.testing.assert_close(knn_radii(a, block=7), knn_radii(a, block=1024))
    assert fraction_inside(b, a, knn_radii(a), block=3) == fraction_inside(b, a, knn_radii(a))
