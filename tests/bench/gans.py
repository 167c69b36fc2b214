"""Benchmark section `gans`: training throughput of MonoGAN and BiGAN at their default sizes on this machine.

Runs each trainer's ``main`` on a synthetic shard set for a few steps and reports the training seconds
per step from its log (set-up and the first step's warm-up excluded). What the lead needs to choose a
MonoGAN ``--time-budget``: generator steps (= 5 critic steps) per minute.
"""
from __future__ import annotations

import json
import os
import tempfile

import click

from tests.toyset import make_toy_set


def _train_seconds(out: str) -> list[tuple[int, float]]:
    with open(os.path.join(out, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f][1:]
    return [(r["step"], r["train_seconds"]) for r in rows if r.get("event") == "train"]


def _per_step(out: str) -> float:
    points = _train_seconds(out)
    (s0, t0), (s1, t1) = points[0], points[-1]
    return (t1 - t0) / max(s1 - s0, 1)


def monogan(tmp: str, quick: bool) -> tuple[str, float]:
    from train.monogan import Config, main

    batch, steps = (8, 3) if quick else (64, 12)
    toy = make_toy_set(os.path.join(tmp, "m-set"), count=batch * 5 * (steps + 2), size=32,
                       per_shard=batch * 5)
    cfg = Config(shards=toy, out=os.path.join(tmp, "m-run"), batch_size=batch, workers=1, device="cpu",
                 epochs=100, max_steps=steps, log_every=1, sample_every=0)
    main(cfg)
    return f"MonoGAN, batch {batch}, g-width {cfg.g_width}, 5 critic steps", _per_step(cfg.out)


def bigan(tmp: str, quick: bool) -> tuple[str, float]:
    from train.bigan import Config, main

    batch, steps, crop, size = (4, 3, 64, 64) if quick else (128, 4, 112, 128)
    toy = make_toy_set(os.path.join(tmp, "b-set"), count=batch * (steps + 2), size=size, per_shard=batch)
    cfg = Config(shards=toy, out=os.path.join(tmp, "b-run"), batch_size=batch, workers=1, device="cpu",
                 epochs=100, max_steps=steps, crop=crop, log_every=1, sample_every=0,
                 **({"head_width": 64, "g_width": 8, "d_width": 8} if quick else {}))
    main(cfg)
    return f"BiGAN, batch {batch}, crop {crop}", _per_step(cfg.out)


def run(quick: bool) -> str:
    """Markdown table of seconds per step (CPU, torch's default thread count)."""
    import torch

    lines = ["## GAN trainers (CPU)\n", f"torch {torch.__version__}, {torch.get_num_threads()} threads"
             + (" (quick: tiny sizes, numbers meaningless)" if quick else "") + ".\n",
             "| trainer | s / step | steps / min |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for bench in (monogan, bigan):
            name, sec = bench(tmp, quick)
            lines.append(f"| {name} | {sec:.2f} | {60 / sec if sec else float('inf'):.1f} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--quick", is_flag=True)
def main(quick: bool) -> None:
    click.echo(run(quick))


if __name__ == "__main__":
    main()
