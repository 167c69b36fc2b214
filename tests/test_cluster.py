"""PCA-whitening + faiss k-means, NMI, cluster statistics and the uniform-over-clusters draws."""
import math

import click
import numpy as np
import pytest

from train import cluster


def planted(n=600, d=512, k=10, noise=0.5, seed=0):
    """Separable synthetic 'fc7 features': non-negative (after a ReLU) noisy copies of k random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    x = np.maximum(centres[y] + noise * rng.normal(size=(n, d)).astype(np.float32), 0)
    return x, y


def nmi_by_definition(a, b):
    """Independent oracle: MI / mean(H(a), H(b)) from explicit probability sums."""
    n = len(a)
    pa = {u: np.mean(a == u) for u in set(a)}
    pb = {v: np.mean(b == v) for v in set(b)}
    mi = sum(np.mean((a == u) & (b == v)) * math.log(np.mean((a == u) & (b == v)) / (pa[u] * pb[v]))
             for u in pa for v in pb if np.any((a == u) & (b == v)))
    ha = -sum(p * math.log(p) for p in pa.values())
    hb = -sum(p * math.log(p) for p in pb.values())
    assert n == len(b)
    return mi / ((ha + hb) / 2)


def test_clustering_recovers_planted_clusters():
    x, y = planted()
    res, times = cluster.run_clustering(x, k=10, pca_dim=32, niter=20, seed=cluster.cluster_seed(0, 3))
    assert cluster.nmi(res.labels, y) > 0.95
    assert res.labels.shape == (600,) and res.labels.dtype == np.int64
    assert set(times) == {"pca_s", "kmeans_s"} and res.loss > 0


def test_clustering_finds_nothing_in_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 64)).astype(np.float32)
    y = rng.integers(0, 10, 600)
    res, _ = cluster.run_clustering(x, k=10, pca_dim=16, niter=20, seed=0)
    assert cluster.nmi(res.labels, y) < 0.1


def test_pca_whiten_rows_are_unit_norm_and_reduced():
    x, _ = planted(n=300, d=128)
    z = cluster.pca_whiten(x, 16)
    assert z.shape == (300, 16) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)


def test_pca_whiten_rank_deficient_features_is_a_clear_error():
    x = np.repeat(np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32), 10, axis=0)
    with pytest.raises(click.ClickException, match="--pca-dim"):
        cluster.pca_whiten(x, 8)


def test_nmi_matches_definition_and_is_permutation_invariant():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 4, 200), rng.integers(0, 3, 200)
    b[:120] = a[:120] % 3  # partly dependent
    assert cluster.nmi(a, b) == pytest.approx(nmi_by_definition(a, b), rel=1e-9)
    perm = rng.permutation(4)
    assert cluster.nmi(a, perm[a]) == pytest.approx(1.0)
    assert cluster.nmi(a, a + 100) == pytest.approx(1.0)
    assert cluster.nmi(np.zeros(5, int), np.ones(5, int)) == 1.0
    with pytest.raises(ValueError):
        cluster.nmi(a, a[:10])


def test_cluster_stats_counts_empty_and_sizes():
    labels = np.array([0, 0, 0, 2, 2, 5])
    s = cluster.cluster_stats(labels, k=8)
    assert s == {"clusters_empty": 5, "cluster_largest": 3, "cluster_median": 2.0, "cluster_smallest": 1}


def test_uniform_draws_give_every_nonempty_cluster_the_same_count():
    rng = np.random.default_rng(3)
    labels = np.concatenate([np.zeros(500), np.full(60, 1), np.full(3, 4), [7]]).astype(np.int64)
    rng.shuffle(labels)
    draws = cluster.uniform_draws(labels, k=10, total=len(labels), rng=np.random.default_rng(4))
    assert len(draws) == len(labels)
    per = np.bincount(labels[draws], minlength=10)
    assert per[[2, 3, 5, 6, 8, 9]].sum() == 0                  # empty clusters are never drawn
    full = per[[0, 1, 4, 7]]
    assert full.max() - full.min() <= 1 and full.sum() == len(labels)
    # a cluster larger than its quota is sampled without replacement
    big = draws[labels[draws] == 0]
    assert len(np.unique(big)) == len(big)


def test_multiplicities_are_seeded_per_epoch():
    labels = np.random.default_rng(5).integers(0, 6, 100)
    m0 = cluster.multiplicities(labels, 6, 100, seed=1, epoch=0)
    assert m0.sum() == 100 and m0.shape == (100,)
    np.testing.assert_array_equal(m0, cluster.multiplicities(labels, 6, 100, seed=1, epoch=0))
    assert not np.array_equal(m0, cluster.multiplicities(labels, 6, 100, seed=1, epoch=1))


def test_cluster_seed_changes_every_epoch_and_is_stable():
    seeds = [cluster.cluster_seed(0, e) for e in range(20)]
    assert len(set(seeds)) == 20 and seeds == [cluster.cluster_seed(0, e) for e in range(20)]
    assert cluster.cluster_seed(1, 0) != seeds[0]


def test_too_few_samples_is_a_clear_error():
    with pytest.raises(click.ClickException, match=r"fewer than --k 100.*lower --k"):
        cluster.check_sizes(64, 100, 16)
    with pytest.raises(click.ClickException, match=r"--pca-dim 256.*at most 63"):
        cluster.check_sizes(64, 8, 256)
    cluster.check_sizes(257, 256, 256)  # enough for both
