"""Fréchet distance against float64 scipy.linalg.sqrtm, and exact merging of shard moments."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import scipy.linalg

from dit_worker.metrics.frechet import Gaussian, frechet_distance, frechet_distance_of_samples
from dit_worker.metrics.inception import LOGITS_DIM, POOL_DIM, SPATIAL_DIM
from dit_worker.metrics.shard_statistics import ShardStatistics, StatisticsMerger, merge
from dit_worker.metrics.statistics import FeatureMoments


def scipy_frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The TTUR / pytorch-fid / ADM formula: sqrtm of the product, 1e-6 diagonal offset if not finite."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns about singular products
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * 1e-6
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def spectrum_covariance(rng: np.random.Generator, d: int, lowest: float, highest: float) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.logspace(np.log10(lowest), np.log10(highest), d)) @ q.T


def sample_covariance(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, d)) * rng.uniform(0.1, 2.0, d) + shift
    return x.mean(0), np.cov(x, rowvar=False)


CASES = {
    "well-conditioned": lambda rng, d: (sample_covariance(rng, 4 * d, d), sample_covariance(rng, 4 * d, d, 0.3)),
    "eigenvalues 1e-14..1": lambda rng, d: (
        (rng.standard_normal(d) * 0.1, spectrum_covariance(rng, d, 1e-14, 1.0)),
        (rng.standard_normal(d) * 0.1, spectrum_covariance(rng, d, 1e-12, 3.0)),
    ),
    "rank-deficient (n < d)": lambda rng, d: (
        sample_covariance(rng, d // 4, d),
        sample_covariance(rng, d // 3, d, 0.3),
    ),
    "one singular": lambda rng, d: (sample_covariance(rng, d // 2, d), sample_covariance(rng, 3 * d, d, 0.1)),
}


@pytest.mark.parametrize("d", [32, 160])
@pytest.mark.parametrize("case", CASES)
def test_frechet_distance_equals_scipy_sqrtm(case: str, d: int) -> None:
    rng = np.random.default_rng(d)
    (mu1, s1), (mu2, s2) = CASES[case](rng, d)
    expected = scipy_frechet(mu1, s1, mu2, s2)
    got = frechet_distance(Gaussian(mu1, s1), Gaussian(mu2, s2))
    assert expected > 1.0
    assert got == pytest.approx(expected, rel=1e-6)
    # symmetric in its arguments, as the distance is
    assert frechet_distance(Gaussian(mu2, s2), Gaussian(mu1, s1)) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_identical_gaussians_is_zero() -> None:
    mu, sigma = sample_covariance(np.random.default_rng(0), 20, 64)  # rank 19 of 64
    assert abs(frechet_distance(Gaussian(mu, sigma), Gaussian(mu, sigma))) < 1e-9 * np.trace(sigma)


@pytest.mark.parametrize(("n1", "n2", "d"), [(6, 9, 200), (50, 12, 64), (40, 60, 48)])
def test_sample_frechet_distance_equals_full_matrices(n1: int, n2: int, d: int) -> None:
    rng = np.random.default_rng(n1)
    x, y = rng.standard_normal((n1, d)), rng.standard_normal((n2, d)) * 1.5 + 0.2
    full = frechet_distance(FeatureMoments.of(x).gaussian(), FeatureMoments.of(y).gaussian())
    assert frechet_distance_of_samples(x, y) == pytest.approx(full, rel=1e-9)
    assert frechet_distance_of_samples(x, y) == pytest.approx(
        scipy_frechet(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)), rel=1e-6
    )


def random_shard(rng: np.random.Generator, ids: np.ndarray, weights_id: str = "w") -> ShardStatistics:
    pool = (rng.standard_normal((len(ids), POOL_DIM)) * 0.3 + 0.2).astype(np.float32)
    spatial = rng.standard_normal((len(ids), SPATIAL_DIM)).astype(np.float32)
    return ShardStatistics(
        weights_id=weights_id,
        sample_ids=ids.astype(np.int64),
        class_ids=(ids % 7).astype(np.int32),
        pool=pool,
        logits=rng.standard_normal((len(ids), LOGITS_DIM)).astype(np.float32),
        pool_moments=FeatureMoments.of(pool),
        spatial_moments=FeatureMoments.of(spatial),
    ), spatial


def test_merged_shard_statistics_equal_statistics_of_all_features() -> None:
    rng = np.random.default_rng(7)
    sizes = [1, 37, 5, 120, 2, 64]  # uneven shards, one of a single sample
    ids = rng.permutation(sum(sizes)) + 1000  # sample ids scattered across shards
    bounds = np.cumsum([0, *sizes])
    shards, spatial = zip(*(random_shard(rng, ids[lo:hi]) for lo, hi in itertools.pairwise(bounds)), strict=True)
    # Through the stored form, merged in another order than computed.
    stored = [ShardStatistics.from_bytes(s.to_bytes()) for s in shards]
    merged = merge(reversed(stored))

    all_pool = np.concatenate([s.pool for s in shards]).astype(np.float64)
    all_spatial = np.concatenate(spatial).astype(np.float64)
    order = np.argsort(np.concatenate([s.sample_ids for s in shards]))
    for moments, features in ((merged.pool_moments, all_pool), (merged.spatial_moments, all_spatial)):
        g = moments.gaussian()
        assert moments.count == len(features)
        np.testing.assert_allclose(g.mu, features.mean(0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g.sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)
    # Per-sample arrays come back ordered by sample_id, rows intact.
    np.testing.assert_array_equal(merged.sample_ids, np.sort(ids))
    np.testing.assert_array_equal(merged.pool, all_pool[order].astype(np.float32))
    np.testing.assert_array_equal(merged.class_ids, merged.sample_ids % 7)


def test_merge_refuses_other_weights_and_repeated_samples() -> None:
    rng = np.random.default_rng(0)
    a, _ = random_shard(rng, np.arange(4))
    b, _ = random_shard(rng, np.arange(4, 8), weights_id="other")
    c, _ = random_shard(rng, np.arange(3, 6))
    with pytest.raises(ValueError, match="different Inception weights"):
        merge([a, b])
    with pytest.raises(ValueError, match=r"more than one shard: \[3\]"):
        merge([a, c])
    with pytest.raises(ValueError, match="nothing to merge"):
        StatisticsMerger().result()
