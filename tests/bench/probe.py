"""Benchmark: the CIFAR probe's two costs on the CPU — one backbone pass into the cache, and probe epochs.

Synthetic inputs of CIFAR-10's sizes (50k train / 10k test, 32x32, small encoder), so it needs no data.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch

from probe import cache as fcache
from probe.backbone import load_backbone
from probe.data import Split
from probe.linear import ProbeConfig, train_cached_layer
from train.config import CommonConfig
from train.run import write_bare_checkpoint
from train.models import Encoder, EncoderSpec


def extraction(n: int, tmp: str) -> float:
    """Images per second through the small encoder into a float16 feature cache (all four layers)."""
    ck = os.path.join(tmp, "ck.pt")
    write_bare_checkpoint(ck, method="random", cfg=CommonConfig(), encoder=Encoder(EncoderSpec(arch="small")))
    bb = load_backbone(ck)
    rng = np.random.default_rng(0)
    split = Split("train", rng.integers(0, 10, n), "bench", images=rng.integers(0, 255, (n, 3, 32, 32),
                                                                                 dtype=np.uint8), size=(32, 32))
    t = time.perf_counter()
    fcache.extract(bb, split, bb.layer_names, os.path.join(tmp, "cache"), batch_size=256, workers=0,
                   device=torch.device("cpu"))
    return n / (time.perf_counter() - t)


def probe_epoch(n: int, dim: int, threads: int) -> float:
    """Seconds per probe epoch (train + test evaluation) on ``n`` cached float16 features of ``dim``."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.random((n, dim), dtype=np.float32).astype(np.float16)
    y = rng.integers(0, 10, n)
    te = n // 5
    cfg = ProbeConfig(epochs=1)
    t = time.perf_counter()
    train_cached_layer("bench", (x, y), (x[:te], y[:te]), 10, cfg, torch.device("cpu"), lambda r: None)
    torch.set_num_threads(old)
    return time.perf_counter() - t


def run(quick: bool) -> str:
    n_img, n_feat = (512, 1000) if quick else (10000, 50000)
    with tempfile.TemporaryDirectory() as tmp:
        ips = extraction(n_img, tmp)
    rows = [f"| backbone pass into the cache (small encoder, 4 layers, float16) | {ips:,.0f} images/s | "
            f"CIFAR-10 60k images: {60000 / ips / 60:.1f} min |"]
    for dim, layer in ((11616, "conv1"), (2304, "conv4")):
        for threads in (1, 2):
            s = probe_epoch(n_feat, dim, threads)
            per_50k = s * 50000 / n_feat
            rows.append(f"| probe epoch, {layer} ({dim} dims), {threads} thread(s) | {per_50k:.1f} s per 50k | "
                        f"36 epochs: {36 * per_50k / 60:.1f} min |")
    return ("## Linear probe (CIFAR, cached features)\n\n"
            f"{'Quick mode: tiny sizes, numbers meaningless.' if quick else ''}\n\n"
            "| what | rate | full run |\n|---|---:|---:|\n" + "\n".join(rows) + "\n")
