"""Benchmark section `precision`: CPU training speed in fp32, bf16 (``--amp on``) and channels-last, and
whether bf16 changes what the trainers learn.

Speed (``run``): each method is built as its command builds it (``tests.bench.loop``), then its ``step``
is timed on one batch from memory, one thread, after two warm-up steps (bf16's first steps pay for
oneDNN's kernel selection). Both wall and CPU seconds are given: on a shared machine the CPU figure is
the steadier one.

Fidelity (``python -m tests.bench.precision fidelity``, about 20 minutes on 2 cores): MonoGAN and RotNet
(small encoder) on an Image B set, the same steps in fp32 and in bf16 (``--amp on --channels-last``), two
seeds each; every checkpoint probed on conv1-conv4 (CIFAR-10 protocol, the probe's backbone pass in the
run's precision). bf16 holds when its difference from fp32 is below the spread between the seeds. Its
last result is kept below (``FIDELITY``), so ``make bench`` does not rerun 20 minutes of training.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import click

# (module, label, config overrides, set size S)
CASES = [
    ("monogan", "MonoGAN, batch 64 (a step: 5 critic + 1 generator update)", dict(batch_size=64), 32),
    ("rotnet", "RotNet, small, batch 192 (x4 rotations)", dict(arch="small", batch_size=192), 32),
    ("rotnet", "RotNet, AlexNet-BN, 224 crop, batch 16 (x4)", dict(arch="alexnet", batch_size=16), 256),
]
MODES = [("fp32", dict(amp="off")), ("fp32, channels-last", dict(amp="off", channels_last=True)),
         ("bf16", dict(amp="on")), ("bf16, channels-last", dict(amp="on", channels_last=True))]

# The last `fidelity` run, pasted from its output (date and commit inside).
FIDELITY = """(not run yet)"""


def seconds_per_step(module: str, kw: dict, size: int, tmp: str, steps: int, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds per counted step, best of ``repeats`` runs of ``steps`` steps."""
    from tests.bench.loop import _build

    method, run, batch = _build(module, kw, tmp, size)
    try:
        n = steps * getattr(method.cfg, "n_critic", 1)
        for _ in range(2 * getattr(method.cfg, "n_critic", 1)):
            method.step(run, batch)
        wall, cpu = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            for _ in range(n):
                method.step(run, batch)
            wall.append((time.perf_counter() - t) / steps)
            cpu.append((time.process_time() - c) / steps)
        return min(wall), min(cpu)
    finally:
        run.close()


def run(quick: bool) -> str:
    """Markdown: seconds per step of each case in each precision mode, and the kept fidelity result."""
    import torch

    from train.run import cpu_bf16_flags

    steps, repeats = (1, 1) if quick else (4, 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for module, label, kw, size in CASES[:2] if quick else CASES:
                if quick:
                    kw = kw | {"batch_size": 8}
                got = [seconds_per_step(module, kw | mode, size, tmp, steps, repeats) for _, mode in MODES]
                cells = " | ".join(f"{w:.2f} / {c:.2f}" for w, c in got)
                rows.append(f"| {label} | {cells} | x{got[0][1] / got[2][1]:.2f} / x{got[0][1] / got[3][1]:.2f} |")
    finally:
        torch.set_num_threads(threads)
    flags = ", ".join(cpu_bf16_flags()) or "none"
    return "\n".join([
        "## Precision on the CPU: fp32, bf16, channels-last\n",
        f"Seconds per step, wall / CPU, one thread, one batch from memory, {steps} steps after 2 warm-up "
        f"steps, best of {repeats}; native bf16 flags of this CPU: {flags}. Speed-up = fp32 CPU time over "
        f"bf16 (and bf16 + channels-last) CPU time."
        + (" (quick: tiny sizes, numbers meaningless)" if quick else "") + "\n",
        "| method | " + " | ".join(m for m, _ in MODES) + " | bf16 speed-up (plain / channels-last) |",
        "|---|" + "---|" * len(MODES) + "---|", *rows, "",
        "### Does bf16 change what is learnt?\n", FIDELITY, ""])


# --------------------------------------------------------------------------- fidelity


def train_and_probe(method: str, precision: str, seed: int, a: dict, out: str) -> dict:
    """Train ``method`` for ``a['steps']`` steps in ``precision`` with ``seed``, probe conv1-conv4."""
    from probe.linear import ProbeConfig, run_probe

    amp = {"amp": "on", "channels_last": True} if precision == "bf16" else {"amp": "off"}
    run_dir = os.path.join(out, f"{method}-{precision}-seed{seed}")
    common = dict(shards=a["shards"], out=run_dir, workers=0, device="cpu", seed=seed, log_every=10, **amp)
    if method == "monogan":
        from train.monogan import Config, main
        cfg = Config(**common, epochs=1000, max_steps=a["steps"], sample_every=0)
    else:
        from train.rotnet import Config, main
        cfg = Config(**common, arch="small", epochs=1000, max_steps=a["steps"], eval_batches=2)
    if not os.path.isfile(os.path.join(run_dir, "checkpoint.pt")):
        main(cfg)
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        trains = [r for r in map(json.loads, f) if r.get("event") == "train"]
    probe = run_probe(ProbeConfig(checkpoint=run_dir, dataset="imagefolder", data_root=a["cifar"], protocol="cifar",
                                  out=os.path.join(run_dir, "probe"), epochs=a["probe_epochs"],
                                  limit_train=a["limit_train"], workers=0, threads=1, amp=amp["amp"],
                                  cache=os.path.join(out, "feature-cache"), keep_cache=False, overwrite=True,
                                  layers=("conv1", "conv2", "conv3", "conv4")))
    return {"method": method, "precision": precision, "seed": seed, "steps": trains[-1]["step"],
            "train_seconds": trains[-1]["train_seconds"], "top1": probe["top1"]}


def fidelity_table(results: list[dict]) -> str:
    """Per method and layer: top-1 of each (precision, seed), the precision gap and the seed spread."""
    lines = []
    for method in sorted({r["method"] for r in results}):
        rs = {(r["precision"], r["seed"]): r for r in results if r["method"] == method}
        seeds = sorted({s for _, s in rs})
        if len(seeds) < 2 or not all((p, s) in rs for p in ("fp32", "bf16") for s in seeds):
            continue
        sec = {p: sum(rs[p, s]["train_seconds"] / rs[p, s]["steps"] for s in seeds) / len(seeds)
               for p in ("fp32", "bf16")}
        lines += [f"**{method}**, {rs['fp32', seeds[0]]['steps']} steps; training s/step fp32 {sec['fp32']:.2f}, "
                  f"bf16 {sec['bf16']:.2f} (x{sec['fp32'] / sec['bf16']:.2f}, one thread, loader included).\n",
                  "| layer | " + " | ".join(f"fp32 s{s}" for s in seeds) + " | " +
                  " | ".join(f"bf16 s{s}" for s in seeds) +
                  " | mean abs fp32-bf16 (same seed) | seed spread fp32 / bf16 | holds |",
                  "|---|" + "---|" * (2 * len(seeds) + 3)]
        for layer in rs["fp32", seeds[0]]["top1"]:
            t = {k: r["top1"][layer] for k, r in rs.items()}
            gap = sum(abs(t["fp32", s] - t["bf16", s]) for s in seeds) / len(seeds)
            spread = {p: max(t[p, s] for s in seeds) - min(t[p, s] for s in seeds) for p in ("fp32", "bf16")}
            cells = " | ".join(f"{t[p, s]:.2f}" for p in ("fp32", "bf16") for s in seeds)
            lines.append(f"| {layer} | {cells} | {gap:.2f} | {spread['fp32']:.2f} / {spread['bf16']:.2f} | "
                         f"{'yes' if gap < max(spread.values()) else 'no'} |")
        lines.append("")
    return "\n".join(lines)


@click.group()
def cli() -> None:
    """The precision benchmark: `speed` (the make bench section) and `fidelity` (fp32 vs bf16 results)."""


@cli.command()
@click.option("--quick", is_flag=True)
def speed(quick: bool) -> None:
    """Print the speed section."""
    click.echo(run(quick))


@cli.command()
@click.option("--shards", required=True, help="An Image B set at S = 32 (augment render --image B --preset cifar).")
@click.option("--cifar", required=True, help="CIFAR-10 as an ImageFolder tree (train/, test/).")
@click.option("--out", required=True, help="Work folder: runs, probes, fidelity.json.")
@click.option("--methods", default="monogan,rotnet", show_default=True)
@click.option("--seeds", default="0,1", show_default=True)
@click.option("--steps", default=40, show_default=True, type=click.IntRange(1))
@click.option("--probe-epochs", default=4, show_default=True, type=click.IntRange(1))
@click.option("--limit-train", default=10000, show_default=True, type=click.IntRange(0))
def fidelity(shards: str, cifar: str, out: str, methods: str, seeds: str, steps: int, probe_epochs: int,
             limit_train: int) -> None:
    """Train each method in fp32 and bf16 with each seed, probe conv1-conv4, print the comparison."""
    import torch

    torch.set_num_threads(1)
    a = {"shards": shards, "cifar": cifar, "steps": steps, "probe_epochs": probe_epochs, "limit_train": limit_train}
    os.makedirs(out, exist_ok=True)
    for method in methods.split(","):
        path = os.path.join(out, f"fidelity-{method}.json")    # one file per method: methods may run at once
        done = json.load(open(path)) if os.path.isfile(path) else []
        for seed in (int(s) for s in seeds.split(",")):
            for precision in ("fp32", "bf16"):
                if not any((r["precision"], r["seed"]) == (precision, seed) for r in done):
                    done.append(train_and_probe(method, precision, seed, a, out))
                    with open(path, "w") as f:
                        json.dump(done, f, indent=1)
    results = [r for name in sorted(os.listdir(out)) if name.startswith("fidelity-") and name.endswith(".json")
               for r in json.load(open(os.path.join(out, name)))]
    click.echo(f"{len(results)} runs, {steps} steps, probes: {probe_epochs} epochs on {limit_train or 'all'} "
               f"training images, the full test split\n")
    click.echo(fidelity_table(results))


if __name__ == "__main__":
    cli()
