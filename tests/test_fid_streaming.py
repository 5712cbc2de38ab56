"""The merge of per-shard statistics in memory flat in the number of samples: sums for FID/sFID/FD,
the fixed subsample (smallest splitmix64 of the sample id) for the per-sample metrics.

The streaming merge over shards in any order equals the same quantities computed at once from all
features (moments) and the subsample rule applied to the whole set (rows); each equality sits next
to the same comparison on a wrong input, which misses by far more than the tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_frechet import random_shard

from dit_worker.metrics.cmmd import subsample as cmmd_subsample
from dit_worker.metrics.embedding_statistics import CLIP, DINOV2, EmbeddingStatistics, ScoreSummary, merge_embeddings
from dit_worker.metrics.shard_statistics import merge
from dit_worker.metrics.statistics import FeatureMoments
from dit_worker.metrics.subsample import Reservoir, sample_key, subsample_rows

# Float64 sums added shard by shard vs np.mean / np.cov / np.std of everything at once, as the largest
# difference relative to the largest entry: measured 0 (mu), 1.1e-15 (sigma), 2.2e-16 (score mean and std)
# on this CPU; the tolerance allows other summation orders.
SUM_TOL = 1e-12


def rel_err(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def test_sample_key_is_splitmix64() -> None:
    # Published outputs of splitmix64.c seeded with 0: the state advances by the golden gamma before each
    # mix, so the k-th output is sample_key of k times the gamma (as a wrapped int64 id).
    with np.errstate(over="ignore"):
        states = (np.arange(3, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)).view(np.int64)
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert [int(k) for k in sample_key(states)] == expected
    assert [int(k) for k in sample_key(np.arange(3))] != expected  # the ids themselves are not the states
    keys = sample_key(np.arange(100_000))
    assert np.unique(keys).size == 100_000  # a bijection: no ties
    # Spread: the 5,000 smallest of 100,000 class-major ids (100 classes of 1,000) hit every class about
    # equally; a rule that kept the smallest ids would take 5 classes.
    picked = subsample_rows(np.arange(100_000), 5_000)
    per_class = np.bincount(picked // 1_000, minlength=100)
    assert per_class.min() > 25 and per_class.max() < 80
    assert np.bincount(np.arange(5_000) // 1_000, minlength=100).astype(bool).sum() == 5


@pytest.mark.parametrize("size", [7, 64, 5000])
def test_reservoir_keeps_the_subsample_of_everything_offered_in_any_order(size: int) -> None:
    rng = np.random.default_rng(size)
    ids = rng.permutation(3000) * 7 + 11
    values = rng.standard_normal((3000, 3)).astype(np.float32)
    expected = subsample_rows(ids, size)
    expected = expected[np.argsort(ids[expected])]
    for order in (np.arange(3000), rng.permutation(3000)):
        reservoir = Reservoir(size)
        bounds = np.sort(rng.choice(np.arange(1, 3000), 40, replace=False))
        for chunk in np.split(order, bounds):  # uneven parts, some larger than the slack
            reservoir.offer(ids[chunk], {"v": values[chunk]})
        got_ids, got = reservoir.result()
        np.testing.assert_array_equal(got_ids, ids[expected])
        np.testing.assert_array_equal(got["v"], values[expected])
        assert reservoir.seen == 3000 and reservoir.capacity == size + max(size // 8, 1024)
    # The wrong rule (the smallest ids) picks other rows.
    if size < 3000:
        assert not np.array_equal(np.sort(ids)[:size], ids[expected])


def test_streaming_merge_equals_all_features_at_once() -> None:
    """24 shards of 50 merged with a subsample of 300: the moments equal np.mean / np.cov of all 1,200
    features; the rows are exactly the subsample rule's rows of the whole set."""
    rng = np.random.default_rng(3)
    ids = rng.permutation(1200) + 10_000
    parts = [random_shard(rng, ids[lo : lo + 50]) for lo in range(0, 1200, 50)]
    shards = [s for s, _ in parts]
    merged = merge(reversed(shards), subsample=300)

    all_ids = np.concatenate([s.sample_ids for s in shards])
    all_pool = np.concatenate([s.pool for s in shards])
    all_spatial = np.concatenate([sp for _, sp in parts]).astype(np.float64)
    assert merged.count == 1200 and len(merged.sample_ids) == 300
    pairs = ((merged.pool_moments, all_pool.astype(np.float64)), (merged.spatial_moments, all_spatial))
    for moments, features in pairs:
        g = moments.gaussian()
        assert rel_err(g.mu, features.mean(0)) < SUM_TOL
        assert rel_err(g.sigma, np.cov(features, rowvar=False)) < SUM_TOL
    rows = subsample_rows(all_ids, 300)
    rows = rows[np.argsort(all_ids[rows])]
    np.testing.assert_array_equal(merged.sample_ids, all_ids[rows])
    np.testing.assert_array_equal(merged.pool, all_pool[rows])
    np.testing.assert_array_equal(merged.class_ids, merged.sample_ids % 7)
    # The same comparison without one shard's moments misses by far more than the tolerance.
    short = merge(shards[1:], subsample=300).pool_moments.gaussian()
    assert rel_err(short.sigma, np.cov(all_pool.astype(np.float64), rowvar=False)) > 1e6 * SUM_TOL
    # A set within the subsample keeps every row (the metrics of sets up to 50,000 are unchanged).
    whole = merge(shards[:6], subsample=300)
    np.testing.assert_array_equal(whole.sample_ids, np.sort(ids[:300]))
    # Cutting a merged set again to a smaller subsample takes the rule's rows of the whole set too.
    cut = merged.subsample(100)
    np.testing.assert_array_equal(cut.sample_ids, np.sort(all_ids[subsample_rows(all_ids, 100)]))
    assert cut.count == 1200


def test_repeated_ids_are_refused_in_the_subsample() -> None:
    rng = np.random.default_rng(0)
    a, _ = random_shard(rng, np.arange(300))
    b, _ = random_shard(rng, np.arange(250, 400))  # 250..299 twice
    with pytest.raises(ValueError, match=r"more than one shard: \[250, 251, 252, 253, 254\]"):
        merge([a, b], subsample=100_000)
    # With a small subsample, the repeats whose keys fall in it are still found.
    keys = sample_key(np.arange(400))
    in_subsample = np.sort(np.argsort(keys)[:50])
    assert np.isin(in_subsample, np.arange(250, 300)).any()
    with pytest.raises(ValueError, match="more than one shard"):
        merge([a, b], subsample=50)


def clip_part(rng: np.random.Generator, ids: np.ndarray) -> EmbeddingStatistics:
    scores = rng.uniform(5, 35, len(ids))
    scores[rng.random(len(ids)) < 0.1] = np.nan  # samples without a prompt
    emb = rng.standard_normal((len(ids), 8)).astype(np.float32)
    return EmbeddingStatistics(CLIP, "clip", ids.astype(np.int64), None, emb, scores)


def test_embedding_merge_keeps_the_cmmd_subsample_and_the_score_summary() -> None:
    rng = np.random.default_rng(5)
    ids = rng.permutation(2000)
    parts = [clip_part(rng, ids[lo : lo + 70]) for lo in range(0, 2000, 70)]
    merged = merge_embeddings(parts[::-1], subsample=300)
    all_ids = np.concatenate([p.sample_ids for p in parts])
    all_emb = np.concatenate([p.embeddings for p in parts])
    all_scores = np.concatenate([p.scores for p in parts])
    rows = cmmd_subsample(all_ids, 300)  # what set_metrics takes from an unmerged set
    rows = rows[np.argsort(all_ids[rows])]
    np.testing.assert_array_equal(merged.sample_ids, all_ids[rows])
    np.testing.assert_array_equal(merged.embeddings, all_emb[rows])
    np.testing.assert_array_equal(cmmd_subsample(merged.sample_ids, 300), np.arange(300))  # already cut
    scored = all_scores[~np.isnan(all_scores)]
    summary = merged.scores_summary()
    assert merged.count == 2000 and summary.count == scored.size
    assert summary.mean == pytest.approx(scored.mean(), rel=SUM_TOL)
    assert summary.std == pytest.approx(scored.std(), rel=SUM_TOL)
    assert abs(ScoreSummary.of(scored[1:]).std / scored.std() - 1) > 1e6 * SUM_TOL  # one score short: far off
    # Stored and read back (the reference cache), the merged part keeps its count and summary.
    again = EmbeddingStatistics.from_bytes(merged.to_bytes())
    assert again.count == 2000 and again.score_summary == summary

    dinov2 = [
        EmbeddingStatistics(DINOV2, "d", p.sample_ids, FeatureMoments.of(p.embeddings), np.zeros((0, 8), np.float32),
                            np.zeros(0))
        for p in parts
    ]  # fmt: skip
    fd = merge_embeddings(dinov2, subsample=300)
    assert fd.count == 2000 and fd.sample_ids.size == 0  # sums only: no per-sample array
    assert rel_err(fd.moments.gaussian().sigma, np.cov(all_emb.astype(np.float64), rowvar=False)) < SUM_TOL
