"""DeepCluster's clustering step and its sampling, as plain functions of arrays.

* ``pca_whiten``: PCA to ``dim`` with whitening (eigenvalue power -0.5), then rows L2-normalised
  (faiss ``PCAMatrix``), as in Caron et al. 2018;
* ``kmeans``: faiss k-means (GPU index when faiss sees a GPU), ``niter`` iterations, a given seed, no
  sub-sampling of the points;
* ``uniform_draws`` / ``multiplicities``: the epoch's sample multiset, uniform over non-empty clusters
  (DeepCluster's UnifLabelSampler), expressed as "sample ``i`` is drawn ``m[i]`` times" so that a
  stream of shards can apply it (see ``train/deepcluster.py`` and docs/deepcluster.md);
* ``nmi``, ``cluster_stats``: what the log reports each epoch.

The small-data limits (PCA to ``dim`` needs more than ``dim`` samples, k-means at least ``k``) are
checked by ``check_sizes`` before any work starts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import click
import numpy as np

from augment.seeds import mix32

MIN_EIG_RATIO = 1e-6  # smallest kept / largest PCA eigenvalue accepted for whitening


def cluster_seed(seed: int, epoch: int) -> int:
    """The k-means seed of an epoch: a new one every epoch, a pure function of (run seed, epoch)."""
    return mix32(seed, epoch, 0xC1D5)


def check_sizes(n: int, k: int, pca_dim: int, where: str = "the shard set") -> None:
    """Fail fast when ``n`` samples cannot give a PCA to ``pca_dim`` or ``k`` clusters."""
    if n < k:
        raise click.ClickException(
            f"{where}: {n} samples are fewer than --k {k} clusters; k-means needs at least k samples: "
            f"lower --k (at most {n}) or render a larger set (--count)")
    if n <= pca_dim:
        raise click.ClickException(
            f"{where}: {n} samples cannot whiten a PCA to --pca-dim {pca_dim} (it needs more samples than "
            f"dimensions): lower --pca-dim (at most {n - 1}) or render a larger set (--count)")


def pca_whiten(x: np.ndarray, dim: int, eigen_power: float = -0.5) -> np.ndarray:
    """PCA-reduce rows of ``x`` to ``dim`` with whitening, then L2-normalise each row (float32)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if dim > d:
        raise click.ClickException(f"--pca-dim {dim} exceeds the feature dimension {d}; lower --pca-dim")
    pca = faiss.PCAMatrix(d, dim, eigen_power)
    # Without this, faiss trains on at most 1000 * d points; DeepCluster uses every sample.
    pca.max_points_per_d = max(1000, -(-n // d))
    pca.train(x)
    eig = faiss.vector_to_array(pca.eigenvalues)[:dim]
    y = pca.apply(x)
    # Below this ratio the last kept direction is float32 rounding noise that whitening would blow up
    # to unit variance, and k-means would cluster the noise.
    ratio = float(eig[-1] / eig[0]) if eig[0] > 0 else 0.0
    if not np.isfinite(y).all() or not ratio > MIN_EIG_RATIO:
        raise click.ClickException(
            f"PCA whitening: the features span fewer than --pca-dim {dim} directions (eigenvalue ratio "
            f"{ratio:.1e}; a collapsed network or duplicate samples); lower --pca-dim (and "
            f"--resume from the last checkpoint)")
    faiss.normalize_L2(y)
    return y


@dataclass
class KMeansResult:
    labels: np.ndarray      # int64, one cluster id per row
    loss: float             # k-means objective after the last iteration
    gpu: bool               # faiss ran on a GPU


def faiss_gpus() -> int:
    """Number of GPUs faiss can use (0 with faiss-cpu)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def kmeans(x: np.ndarray, k: int, niter: int = 20, seed: int = 0, gpu: bool | None = None) -> KMeansResult:
    """faiss k-means of the rows of ``x`` into ``k`` clusters; ``gpu=None`` uses a GPU when faiss has one."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    check_sizes(n, k, 0)
    use_gpu = faiss_gpus() > 0 if gpu is None else gpu
    # DeepCluster clusters every point (no sub-sampling) and tolerates few points per centroid.
    km = faiss.Kmeans(d, k, niter=niter, seed=int(seed), verbose=False, gpu=bool(use_gpu),
                      max_points_per_centroid=max(256, -(-n // k) + 1), min_points_per_centroid=1)
    km.train(x)
    _, labels = km.index.search(x, 1)
    return KMeansResult(labels.reshape(-1).astype(np.int64), float(km.obj[-1]), bool(use_gpu))


def run_clustering(features: np.ndarray, k: int, pca_dim: int, niter: int, seed: int) -> tuple[KMeansResult, dict]:
    """PCA-whiten + L2-normalise + k-means; returns the result and the seconds of each phase."""
    t0 = time.perf_counter()
    y = pca_whiten(features, pca_dim)
    t1 = time.perf_counter()
    res = kmeans(y, k, niter, seed)
    t2 = time.perf_counter()
    return res, {"pca_s": round(t1 - t0, 3), "kmeans_s": round(t2 - t1, 3)}


# --------------------------------------------------------------------------- statistics


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information of two labelings (arithmetic-mean normalisation, as sklearn's default)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in length: {a.size} vs {b.size}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    ha, hb = _entropy(np.bincount(ai)), _entropy(np.bincount(bi))
    if ha == 0.0 and hb == 0.0:
        return 1.0  # both constant: identical partitions
    if ha == 0.0 or hb == 0.0:
        return 0.0
    _, joint = np.unique(ai.astype(np.int64) * (bi.max() + 1) + bi, return_counts=True)
    mi = ha + hb - _entropy(joint)
    return float(max(0.0, min(1.0, mi / ((ha + hb) / 2))))


def cluster_stats(labels: np.ndarray, k: int) -> dict:
    """Empty clusters, and the largest / median / smallest size among the non-empty ones."""
    sizes = np.bincount(labels, minlength=k)
    full = sizes[sizes > 0]
    return {"clusters_empty": int((sizes == 0).sum()), "cluster_largest": int(full.max()),
            "cluster_median": float(np.median(full)), "cluster_smallest": int(full.min())}


# --------------------------------------------------------------------------- uniform sampling


def uniform_draws(labels: np.ndarray, k: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """Sample indices drawn uniformly over non-empty clusters: ``total`` draws, in random order.

    Each non-empty cluster gets ``total // K'`` or one more draws (the clusters that get one more are
    chosen at random), taken without replacement inside the cluster when it is large enough and with
    replacement otherwise. DeepCluster's UnifLabelSampler draws ``total // K' + 1`` per cluster and cuts
    the shuffled list at ``total``, which leaves cluster counts a few draws apart; this keeps them
    within one.
    """
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=k)
    full = np.flatnonzero(sizes)
    quota = np.full(len(full), total // len(full), dtype=np.int64)
    quota[rng.permutation(len(full))[: total % len(full)]] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)])[full]
    out = []
    for c, s, q in zip(full, starts, quota):
        members = order[s:s + sizes[c]]
        out.append(rng.choice(members, q, replace=len(members) < q))
    draws = np.concatenate(out) if out else np.zeros(0, np.int64)
    rng.shuffle(draws)
    return draws


def multiplicities(labels: np.ndarray, k: int, total: int, seed: int, epoch: int) -> np.ndarray:
    """How many times each sample is drawn this epoch (int32 array over sample indices), seeded by (seed, epoch)."""
    rng = np.random.default_rng([int(seed), int(epoch), 0x5A3])
    draws = uniform_draws(labels, k, total, rng)
    return np.bincount(draws, minlength=len(labels)).astype(np.int32)
