"""Benchmark section: DeepCluster's clustering step alone (PCA-256 whitening + faiss k-means).

Random 4096-d features (ReLU'd Gaussians, like fc7 outputs) at n = 50,000 and 200,000 with k = 1,000,
each phase timed, then an estimate for ImageNet scale (n = 1.28M, k = 10,000) from two cost models:

* k-means: time proportional to n * k * iterations (the assignment step, a n x k distance product per
  iteration, dominates; the dimension is 256 in both cases);
* PCA: a + b * n, fitted through the two measured sizes (the eigen decomposition of the 4096 x 4096
  covariance, d^3, is the constant a; accumulating the covariance, n * d^2, is the slope b).
"""
from __future__ import annotations

import os

import time

import numpy as np

from train import cluster

D, PCA_DIM, ITERS = 4096, 256, 20
TARGET_N, TARGET_K = 1_281_167, 10_000


def random_features(n: int, d: int = D, seed: int = 0) -> np.ndarray:
    """ReLU'd Gaussian features, generated in chunks to keep the peak memory at one copy."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, 16384):
        chunk = rng.standard_normal((min(16384, n - i), d), dtype=np.float32)
        x[i:i + len(chunk)] = np.maximum(chunk, 0)
    return x


def time_clustering(n: int, k: int, d: int = D, niter: int = ITERS) -> dict:
    """Seconds of PCA-whitening and of k-means for n random d-dim features into k clusters."""
    x = random_features(n, d)
    t0 = time.perf_counter()
    y = cluster.pca_whiten(x, PCA_DIM)
    t1 = time.perf_counter()
    res = cluster.kmeans(y, k, niter, seed=0)
    t2 = time.perf_counter()
    st = cluster.cluster_stats(res.labels, k)
    return {"n": n, "k": k, "pca_s": t1 - t0, "kmeans_s": t2 - t1, "empty": st["clusters_empty"],
            "gpu": res.gpu}


def estimate(small: dict, big: dict, n: int = TARGET_N, k: int = TARGET_K) -> dict:
    """Extrapolate two measurements to (n, k) at the same iterations, with the docstring's cost models."""
    slope = (big["pca_s"] - small["pca_s"]) / (big["n"] - small["n"])
    pca = big["pca_s"] + slope * (n - big["n"]) if slope > 0 else big["pca_s"] * n / big["n"]
    return {"pca_s": pca, "kmeans_s": big["kmeans_s"] * (n * k) / (big["n"] * big["k"])}


def run(quick: bool) -> str:
    """Markdown section: a table of measured phases and the ImageNet-scale estimate."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)  # as the trainer's main process has them

    d = 256 if quick else D
    cases = [(1_000, 20), (2_000, 20)] if quick else [(50_000, 1_000), (200_000, 1_000)]
    rows = [time_clustering(n, k, d) for n, k in cases]
    big = rows[-1]
    est = estimate(rows[0], big)
    lines = ["## Clustering (DeepCluster's PCA + k-means)", "",
             f"Random {d}-d features, PCA to {PCA_DIM} with whitening + L2 normalisation, faiss "
             f"{faiss.__version__} k-means ({ITERS} iterations, {'GPU' if big['gpu'] else 'CPU'}, "
             f"{faiss.omp_get_max_threads()} threads).", "",
             "| n | k | PCA (s) | k-means (s) | total (s) | empty clusters |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['k']:,} | {r['pca_s']:.2f} | {r['kmeans_s']:.2f} | "
                     f"{r['pca_s'] + r['kmeans_s']:.2f} | {r['empty']} |")
    lines += ["", f"Estimate for n = {TARGET_N:,}, k = {TARGET_K:,} from these rows (k-means ∝ "
              f"n·k·iterations from the largest; PCA = a + b·n through both): "
              f"PCA ≈ {est['pca_s'] / 60:.1f} min, k-means ≈ "
              f"{est['kmeans_s'] / 60:.1f} min, together ≈ {(est['pca_s'] + est['kmeans_s']) / 60:.1f} min "
              f"per epoch on this machine. The features alone take {TARGET_N * D * 4 / 2**30:.0f} GiB "
              f"of RAM (float32)."]
    if quick:
        lines += ["", "_--quick: tiny sizes, numbers meaningless._"]
    return "\n".join(lines) + "\n"
