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
FIDELITY = """\
Measured at commit 1f4dc8c on 2026-12-01 on the 2-core Intel Xeon (Sapphire Rapids: `avx512_bf16`,
`amx_bf16`) development VM, shared with other work (load average 5-7), by
`python -m tests.bench.precision fidelity --methods monogan` and, side by side, `--methods rotnet
--steps 52` (about 20 minutes of wall time for both). Data: an Image B set of 5,000 patches at S = 32
(`augment render --image B --preset cifar --count 5000`). MonoGAN: 40 generator steps (200 critic
batches of 64, 2.6 epochs); RotNet, small encoder: 52 steps (2 epochs of batch 192 x 4 rotations).
fp32 = `--amp off`; bf16 = `--amp on --channels-last`; seeds 0 and 1 (RotNet: later also 2 and 3, below);
one thread, `--workers 0`.
Probes: `probe.linear --protocol cifar` on the CIFAR-10 JPEG tree, conv1-conv4, **4 epochs** (the paper
schedule scaled), a seeded subset of **10,000 training images**, the full 10,000 test images, the
backbone pass in the run's precision (`--amp` of the run). Top-1 (%):

**monogan**, 40 steps; training s/step fp32 7.51, bf16 3.31 (x2.27, one thread, loader included).

| layer | fp32 s0 | fp32 s1 | bf16 s0 | bf16 s1 | fp32-bf16, same seed (mean abs) | seed spread, fp32 (bf16) | gap < fp32 seed spread |
|---|---|---|---|---|---|---|---|
| conv1 | 41.23 | 40.17 | 41.19 | 40.20 | 0.04 | 1.06 (0.99) | yes |
| conv2 | 42.98 | 40.82 | 43.02 | 41.01 | 0.12 | 2.16 (2.01) | yes |
| conv3 | 39.80 | 37.29 | 39.75 | 37.20 | 0.07 | 2.51 (2.55) | yes |
| conv4 | 36.19 | 34.77 | 36.23 | 34.68 | 0.07 | 1.42 (1.55) | yes |

**rotnet**, 52 steps, seeds 0-3 (seeds 0 and 1 at commit 1f4dc8c on the loaded machine, seeds 2 and 3 at
commit cc6e47b on the idle one, with the same set, data and arguments: `--seeds 2` and `--seeds 3` side by
side); training s/step fp32 2.99, bf16 1.54 (x1.94, one thread, loader included, mean over the four seeds).

| layer | fp32 s0 | fp32 s1 | fp32 s2 | fp32 s3 | bf16 s0 | bf16 s1 | bf16 s2 | bf16 s3 | fp32-bf16, same seed (mean abs) | seed spread, fp32 (bf16) | gap < fp32 seed spread |
|---|---|---|---|---|---|---|---|---|---|---|---|
| conv1 | 47.35 | 47.31 | 47.68 | 47.68 | 47.35 | 47.68 | 47.93 | 47.60 | 0.17 | 0.37 (0.58) | yes |
| conv2 | 49.95 | 49.27 | 49.92 | 49.57 | 49.89 | 50.02 | 49.79 | 49.63 | 0.25 | 0.68 (0.39) | yes |
| conv3 | 47.72 | 48.53 | 48.89 | 47.71 | 47.95 | 48.25 | 48.74 | 47.68 | 0.17 | 1.18 (1.06) | yes |
| conv4 | 46.57 | 45.81 | 46.57 | 45.36 | 46.38 | 46.02 | 45.93 | 45.31 | 0.27 | 1.21 (1.07) | yes |

Reading. MonoGAN: bf16 moves each layer by 0.04-0.12 points, a twentieth of the 1.1-2.5 points between
two seeds: it holds. RotNet: with two seeds the gap was below the fp32 seed spread in conv2-conv4 but not
in conv1, where seeds 0 and 1 happened to land 0.04 apart; with four seeds bf16 moves each layer by
0.17-0.27 points (mean over the seeds of |fp32 - bf16| with the same seed) while the fp32 seeds spread
over 0.37-1.21 points: it holds in every layer. Every difference is also below the probe's own sampling
error (one standard error of an accuracy near 47% on 10,000 test images is 0.5 points). The runs are
short: this checks early training, not convergence. On this evidence `make repro-cpu` uses bf16 by
default (`--amp on --channels-last`, `repro/table3.py`); the single commands keep their own defaults
(docs/training.md, *Precision*). The training speed-ups in the headings are from these runs, loader
included; the table above is the cleaner speed measurement."""


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


def speed_reading(cpu: dict[str, list[float]]) -> str:
    """What the table says, from its CPU times (per case: the MODES in order)."""
    def pct(a: float, b: float) -> str:  # CPU time saved (+) or added (-) by channels-last
        return f"{100 * (a - b) / a:+.0f}%"

    def short(label: str) -> str:  # "RotNet, small, batch 192 (x4 rotations)" -> "RotNet small"
        return " ".join(p for p in label.split(" (")[0].split(", ")[:2] if not p.startswith("batch"))

    mono = next((v for k, v in cpu.items() if k.startswith("MonoGAN")), None)
    head = (f"MonoGAN: **x{mono[0] / mono[2]:.2f}** in bf16 (goal x1.5), x{mono[0] / mono[3]:.2f} with "
            f"channels-last. " if mono else "")
    return (head + "Channels-last, CPU time saved: in bf16 "
            + ", ".join(f"{short(k)} {pct(v[2], v[3])}" for k, v in cpu.items())
            + "; in fp32 " + ", ".join(f"{short(k)} {pct(v[0], v[1])}" for k, v in cpu.items())
            + ". It is an option (`--channels-last`), on in the reproduction pipeline together with bf16.")


def run(quick: bool) -> str:
    """Markdown: seconds per step of each case in each precision mode, and the kept fidelity result."""
    import torch

    from train.run import cpu_bf16_flags

    steps, repeats = (1, 1) if quick else (4, 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows, cpu = [], {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for module, label, kw, size in CASES[:2] if quick else CASES:
                if quick:
                    kw = kw | {"batch_size": 8}
                got = [seconds_per_step(module, kw | mode, size, tmp, steps, repeats) for _, mode in MODES]
                cpu[label] = [c for _, c in got]
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
        "|---|" + "---|" * len(MODES) + "---|", *rows, "", speed_reading(cpu), "",
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
                  " | fp32-bf16, same seed (mean abs) | seed spread, fp32 (bf16) | gap < fp32 seed spread |",
                  "|---|" + "---|" * (2 * len(seeds) + 3)]
        for layer in rs["fp32", seeds[0]]["top1"]:
            t = {k: r["top1"][layer] for k, r in rs.items()}
            gap = sum(abs(t["fp32", s] - t["bf16", s]) for s in seeds) / len(seeds)
            spread = {p: max(t[p, s] for s in seeds) - min(t[p, s] for s in seeds) for p in ("fp32", "bf16")}
            cells = " | ".join(f"{t[p, s]:.2f}" for p in ("fp32", "bf16") for s in seeds)
            lines.append(f"| {layer} | {cells} | {gap:.2f} | {spread['fp32']:.2f} ({spread['bf16']:.2f}) | "
                         f"{'yes' if gap < spread['fp32'] else '**no**'} |")
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
