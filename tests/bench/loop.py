"""Benchmark section `loop`: what the shared training loop costs beside a bare loop over the same model.

Each method is built as its command builds it (on a small synthetic set), then fed the same batch from
memory two ways: (a) a bare loop, ``for batch in batches: method.step(run, batch)``; (b) the shared
loop, ``train.loop.train_epoch`` (progress bar, finite check, meters, logs, the --max-steps/budget check,
hooks). Both run after a warm-up step, alternately, best of ``repeats``. Goal (issue 12): the shared
machinery costs less than 5%.
"""
from __future__ import annotations

import os
import tempfile
import time

from tests.toyset import make_toy_set

# (module, label, config overrides, set size S): small sizes so the section takes a few minutes.
CASES = [
    ("rotnet", "RotNet, small, batch 64", dict(arch="small", batch_size=64), 32),
    ("rotnet", "RotNet, AlexNet 64 crop, batch 32", dict(arch="alexnet", crop=64, batch_size=32), 64),
    ("monogan", "MonoGAN, batch 64 (5 critic steps per step)", dict(batch_size=64), 32),
    ("simclr", "SimCLR, small, batch 64", dict(arch="small", batch_size=64), 32),
    ("dino", "DINO, small, batch 32, 2+2 views", dict(arch="small", batch_size=32, local_crops=2, out_dim=4096), 32),
    ("deepcluster", "DeepCluster, AlexNet 64 crop, batch 32", dict(crop=64, batch_size=32, k=8, pca_dim=16), 64),
]


class Fixed:
    """The same batch ``n`` times per epoch, with the loader interface the loop reads."""

    def __init__(self, batch, n: int):
        self.batch, self.batches_per_epoch = batch, n

    def epoch(self, epoch: int, skip: int = 0):
        return [self.batch] * (self.batches_per_epoch - skip)


def _build(module: str, cfg_kw: dict, tmp: str, size: int):
    import importlib

    from train.run import Run

    mod = importlib.import_module(f"train.{module}")
    cls = next(v for v in vars(mod).values() if isinstance(v, type) and getattr(v, "name", "") == module)
    toy = make_toy_set(os.path.join(tmp, f"{module}-{size}-set"), count=256, size=size, per_shard=64)
    cfg = mod.Config(shards=toy, out=os.path.join(tmp, f"{module}-{len(os.listdir(tmp))}"), workers=0,
                     device="cpu", log_every=20, **cfg_kw)
    method = cls(cfg)
    run = Run(cfg, method.name)
    method.build(run)
    method.begin_epoch(run, 0, 0)
    batch = next(iter(method.loader.epoch(0)))
    return method, run, batch


def _rates(method, run, batch, steps: int, repeats: int) -> tuple[float, float]:
    from train.loop import train_epoch

    n = steps * getattr(method.cfg, "n_critic", 1)    # MonoGAN counts a step per n_critic batches
    method.loader = Fixed(batch, n)
    method.step(run, batch)                          # warm-up
    bare, loop = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            method.step(run, batch)
        bare.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        _, done = train_epoch(run, method, 0, 0)
        loop.append(done / (time.perf_counter() - t))  # the batches it ran: a stop (budget) cannot inflate it
    return max(bare), max(loop)


def run(quick: bool) -> str:
    steps, repeats = (2, 1) if quick else (10, 2)
    rows, load0 = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for module, label, kw, size in CASES:
            method, r, batch = _build(module, kw, tmp, size)
            try:
                bare, loop = _rates(method, r, batch, steps, repeats)
            finally:
                r.close()
            rows.append(f"| {label} | {bare:.2f} | {loop:.2f} | {100 * (1 - loop / bare):+.1f}% |")
    return "\n".join([
        "## The shared training loop against a bare loop\n",
        f"Batches per second (a batch: one `step` call), the same batch from memory, {steps} steps per run, "
        f"best of {repeats}, CPU, default threads, load average {load0:.1f} before and {os.getloadavg()[0]:.1f} after "
        f"on {os.cpu_count()} cores. Overhead = 1 - loop / bare; goal < 5%. Negative values are run-to-run noise "
        f"(a loaded machine moves whole rows).\n",
        "| method | bare loop | shared loop | overhead |", "|---|---|---|---|", *rows, ""])
