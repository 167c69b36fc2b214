"""`make repro-cpu`: the paper's central CIFAR-10 result (Table 3) at reduced scale, in one command.

Steps, each skipped when its output exists (re-running resumes):

1. extract CIFAR-10 (the JPEG ImageFolder tarball of ../shared/data) unless a folder is given;
2. render Image B at S = 32 (``--preset cifar``, D = 50,000);
3. train the small encoder of section 4.2 with the same wall-clock CPU budget each: MonoGAN on that set,
   fully supervised on CIFAR-10 train, RotNet on the Image B set; and a random initialisation;
4. linear probes on CIFAR-10, conv1..conv4;
5. ``docs/results.md`` (Table 3 layout, paper numbers beside) and ``docs/results.png``.

``--ablation`` renders Table 1's eight augmentation cells, trains MonoGAN on each with a smaller budget
(cell (j) twice, with two training seeds, as a yardstick for noise) and probes them, adding a Table 1
section, the main effect of each augmentation and ``docs/results-ablation.png`` to the same results. Every step runs as a subprocess
through the project's own command line, so what this measures is exactly what a user runs.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass

import click

LAYERS = ["conv1", "conv2", "conv3", "conv4"]
# Paper, Table 3 (CIFAR-10 columns) and Table 1.
PAPER_T3 = {
    "Fully supervised": [66.5, 70.1, 72.4, 75.9],
    "Random": [57.8, 55.5, 54.2, 47.3],
    "RotNet": [64.4, 65.6, 65.6, 59.1],
    "GAN (CIFAR-10)": [67.7, 73.0, 72.5, 69.2],
    "MonoGAN": [68.1, 72.3, 70.8, 63.5],
}
PAPER_T1 = {
    "(a) Fully sup.": [66.5, 70.1, 72.4, 75.9],
    "(b) Random feat.": [57.8, 55.5, 54.2, 47.3],
    "(c) No aug.": [57.9, 56.2, 54.2, 47.8],
    "(d) Jitter": [58.9, 58.0, 57.0, 49.8],
    "(e) Rotation": [61.4, 58.8, 56.1, 47.5],
    "(f) Scale": [67.9, 69.3, 67.9, 59.1],
    "(g) Rot. & jitter": [64.9, 63.6, 61.0, 53.4],
    "(h) Rot. & scale": [67.6, 69.9, 68.0, 60.7],
    "(i) Jitter & scale": [68.1, 71.3, 69.5, 62.4],
    "(j) All": [68.1, 72.3, 70.8, 63.5],
}
# Table 1 cell -> which augmentations are on (scale, rotation, jitter).
ABLATION_CELLS = {
    "(c) No aug.": (False, False, False),
    "(d) Jitter": (False, False, True),
    "(e) Rotation": (False, True, False),
    "(f) Scale": (True, False, False),
    "(g) Rot. & jitter": (False, True, True),
    "(h) Rot. & scale": (True, True, False),
    "(i) Jitter & scale": (True, False, True),
    "(j) All": (True, True, True),
}
# A second training seed of cell (j): how far two runs of one cell land apart at this budget, i.e. the
# smallest difference between cells that means anything.
SEED_CELL = "(j) All, seed +1"
AUGMENTATIONS = ("scale", "rotation", "jitter")


@dataclass(frozen=True)
class ReproConfig:
    images: str                      # folder holding the paper's images (animals.png = Image B)
    cifar: str                       # CIFAR-10 JPEG tarball or extracted ImageFolder (train/, test/)
    image: str = "B"                 # the source: Image B of the paper, or an image file
    work: str = "runs/repro-cpu"
    out: str = "docs/results.md"
    count: int = 50_000              # D, the number of rendered patches
    train_seconds: float = 600.0     # wall-clock CPU budget per trained method
    ablation_seconds: float = 180.0  # per Table 1 cell
    ablation_steps: int = 0          # if > 0: each cell trains this many generator steps instead
    probe_epochs: int = 36
    probe_jobs: int = 2              # layers probed in parallel processes (same results, faster on 2 cores)
    schedule: str = "paper"
    batch_size: int = 64
    workers: int = 1
    seed: int = 0
    rotnet: bool = True
    ablation: bool = False
    device: str = "cpu"
    # bf16 wherever native (CPU too): the same probe results as fp32, ~2x faster (docs/benchmarks.md,
    # Precision); "default": each command's own --amp (the argv of work folders made before this option)
    amp: str = "on"
    channels_last: bool = True      # faster with bf16 on the CPU (docs/benchmarks.md, Precision)
    monogan_steps: int = 0           # if > 0: Table 3's MonoGAN trains this many generator steps
    full_schedules: bool = False     # supervised and RotNet train their own --epochs schedules


# --------------------------------------------------------------------------- steps


def _done_path(cfg: ReproConfig, name: str) -> str:
    return os.path.join(cfg.work, "done", name.replace(" ", "_").replace("/", "_") + ".json")


def step(cfg: ReproConfig, name: str, argv: list[str], progress: str) -> dict:
    """Run one command unless its done-marker exists; the marker records command, time and result."""
    marker = _done_path(cfg, name)
    if os.path.isfile(marker):
        with open(marker) as f:
            rec = json.load(f)
        if rec["argv"] != argv:  # a changed budget or option must not silently reuse the old result
            raise click.ClickException(
                f"step {name!r} was done in {cfg.work} with other arguments ({' '.join(rec['argv'])}); use a "
                f"new --work folder, or delete {marker} and that step's outputs to redo it")
        click.echo(f"{progress} {name}: done earlier ({rec['seconds']:.0f} s), skipped", err=True)
        return rec
    click.echo(f"{progress} {name}: {' '.join(argv)}", err=True)
    env = os.environ | {"SOURCE_IMAGE_DIR": cfg.images, "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", *argv], env=env)
    if proc.returncode != 0:
        raise click.ClickException(f"step {name!r} failed (exit {proc.returncode}); fix the error above and "
                                   f"re-run: finished steps are skipped")
    rec = {"name": name, "argv": argv, "seconds": time.time() - t0, "commit": git_rev()}
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker + ".partial", "w") as f:
        json.dump(rec, f)
    os.replace(marker + ".partial", marker)
    return rec


def cifar_root(cfg: ReproConfig) -> str:
    """An ImageFolder root with train/ and test/: the given folder, or the tarball extracted once."""
    if os.path.isdir(cfg.cifar):
        return cfg.cifar
    if not os.path.isfile(cfg.cifar):
        raise click.ClickException(f"{cfg.cifar}: CIFAR-10 not found; pass CIFAR=path/to/cifar10-jpg.tar.gz "
                                   f"(or an ImageFolder with train/ and test/)")
    dest = os.path.join(cfg.work, "data", "cifar10")
    if not os.path.isdir(os.path.join(dest, "test")):
        click.echo(f"extracting {cfg.cifar} -> {dest}", err=True)
        tmp = dest + ".partial"
        with tarfile.open(cfg.cifar) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, dest)
    return dest


def render_args(cfg: ReproConfig, out: str, scale=True, rotation=True, jitter=True) -> list[str]:
    args = ["augment", "render", "--image", cfg.image, "--preset", "cifar", "--quiet", "--count", str(cfg.count),
            "--seed", str(cfg.seed), "--workers", "2", "--out", out]
    args += [] if scale else ["--no-scale"]
    args += [] if rotation else ["--no-rotation"]
    args += [] if jitter else ["--no-jitter"]
    return args


def amp_args(cfg: ReproConfig) -> list[str]:
    """--amp for every command; none with "default", whose argv is that of work folders made before it."""
    return [] if cfg.amp == "default" else ["--amp", cfg.amp]


def train_common(cfg: ReproConfig, out: str, seconds: float, seed_offset: int = 0, steps: int = 0,
                 full: bool = False) -> list[str]:
    """Flags every trained method shares; the budget is ``steps`` optimisation steps when given, else
    ``seconds`` of training; ``full``: the trainer's own --epochs schedule instead."""
    budget = ["--max-steps", str(steps)] if steps else ["--time-budget", f"{seconds:g}"]
    length = [] if full else ["--epochs", "10000", *budget]
    return ["--out", out, "--device", cfg.device, "--seed", str(cfg.seed + seed_offset),
            "--workers", str(cfg.workers), *length, *amp_args(cfg)] + (["--channels-last"] if cfg.channels_last else [])


def probe_args(cfg: ReproConfig, ckpt: str, out: str, data: str) -> list[str]:
    return ["probe.linear", "--checkpoint", ckpt, "--dataset", "imagefolder", "--data-root", data,
            "--out", out, "--epochs", str(cfg.probe_epochs), "--schedule", cfg.schedule,
            "--device", cfg.device, "--workers", str(cfg.workers), "--protocol", "cifar",
            "--jobs", str(cfg.probe_jobs), *amp_args(cfg),
            # the float16 CIFAR-10 cache is ~3 GB per checkpoint: kept only while that probe runs
            "--cache", os.path.join(cfg.work, "cache"), "--drop-cache"]


def main_plan(cfg: ReproConfig, data: str) -> list[tuple[str, list[str], str | None]]:
    """(step name, argv, probe result folder or None) for the Table 3 pipeline."""
    w = cfg.work
    image_b = os.path.join(w, "sets", "B-cifar")
    plan = [("render Image B", render_args(cfg, image_b), None)]
    runs = {
        "MonoGAN": ["train.monogan", "--shards", image_b, "--batch-size", str(cfg.batch_size)],
        "Fully supervised": ["train.supervised", "--dataset", "imagefolder", "--data", data,
                             "--arch", "small", "--batch-size", str(cfg.batch_size)],
    }
    if cfg.rotnet:
        runs["RotNet"] = ["train.rotnet", "--shards", image_b, "--arch", "small", "--crop", "28",
                          "--batch-size", str(cfg.batch_size)]
    for label, argv in runs.items():
        run_dir = os.path.join(w, "runs", slug(label))
        plan.append((f"train {label}", argv + train_common(
            cfg, run_dir, cfg.train_seconds, steps=cfg.monogan_steps if label == "MonoGAN" else 0,
            full=cfg.full_schedules and label != "MonoGAN"), None))
    plan.append(("init Random", ["train.random", "--arch", "small", "--seed", str(cfg.seed),
                                 "--out", os.path.join(w, "runs", "random")], None))
    for label in ["Fully supervised", "Random", *[k for k in runs if k != "Fully supervised"]]:
        run_dir = os.path.join(w, "runs", slug(label))
        res = os.path.join(w, "probes", slug(label))
        plan.append((f"probe {label}", probe_args(cfg, os.path.join(run_dir, "checkpoint.pt"), res, data),
                     res))
    return plan


def ablation_plan(cfg: ReproConfig, data: str) -> list[tuple[str, list[str], str | None]]:
    w, plan = cfg.work, []
    for label, (scale, rot, jit) in ABLATION_CELLS.items():
        s = slug(label)
        if scale and rot and jit:  # cell (j) is the main Image B set: same config, same bytes
            set_dir = os.path.join(w, "sets", "B-cifar")
        else:
            set_dir = os.path.join(w, "sets", f"ablation-{s}")
            plan.append((f"render {label}", render_args(cfg, set_dir, scale, rot, jit), None))
        plan += _monogan_cell(cfg, label, set_dir, data)
    return plan + _monogan_cell(cfg, SEED_CELL, os.path.join(w, "sets", "B-cifar"), data, seed_offset=1)


def _monogan_cell(cfg: ReproConfig, label: str, set_dir: str, data: str, seed_offset: int = 0) -> list:
    run_dir = ablation_run_dir(cfg, label)
    res = os.path.join(cfg.work, "probes", f"ablation-{slug(label)}")
    return [(f"train MonoGAN {label}", ["train.monogan", "--shards", set_dir, "--batch-size", str(cfg.batch_size)]
             + train_common(cfg, run_dir, cfg.ablation_seconds, seed_offset, cfg.ablation_steps), None),
            (f"probe {label}", probe_args(cfg, os.path.join(run_dir, "checkpoint.pt"), res, data), res)]


def ablation_run_dir(cfg: ReproConfig, label: str) -> str:
    return os.path.join(cfg.work, "runs", f"ablation-{slug(label)}")


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")


# --------------------------------------------------------------------------- results


def layer_accuracies(result_dir: str) -> list[float | None]:
    """Top-1 (%) per layer from a probe's ``probe.json`` (its final-epoch accuracy, as the paper reports)."""
    with open(os.path.join(result_dir, "probe.json")) as f:
        res = json.load(f)
    top1 = res["top1"]
    return [None if top1.get(layer) is None else float(top1[layer]) for layer in LAYERS]


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def table(rows: dict[str, list[float | None]], paper: dict[str, list[float]], first: str = "Method",
          ours=_fmt, theirs=_fmt) -> str:
    """Markdown table, one row per label: ours and the paper's value side by side for every layer."""
    head = f"| {first} | " + " | ".join(f"{l} (ours) | {l} (paper)" for l in LAYERS) + " |\n"
    head += "|---|" + "---:|---:|" * len(LAYERS) + "\n"
    lines = []
    for label, accs in rows.items():
        ref = paper.get(label, [None] * len(LAYERS))
        lines.append(f"| {label} | " + " | ".join(f"{ours(a)} | {theirs(p)}" for a, p in zip(accs, ref)) + " |")
    return head + "\n".join(lines) + "\n"


def verdict(rows: dict[str, list[float | None]]) -> str:
    """Does the paper's ordering hold? MonoGAN conv1/conv2 above Random, and its gap to supervised."""
    mono, rand, sup = rows.get("MonoGAN"), rows.get("Random"), rows.get("Fully supervised")
    if not (mono and rand and sup):
        return "Not all of MonoGAN, Random and Fully supervised were measured: no verdict."
    out = []
    for i, layer in enumerate(LAYERS[:2]):
        above = mono[i] > rand[i]
        out.append(f"- {layer}: MonoGAN {mono[i]:.1f} vs Random {rand[i]:.1f} — "
                   f"{'above, as in the paper' if above else 'NOT above: the paper ordering does not hold here'}; "
                   f"Fully supervised {sup[i]:.1f} (MonoGAN {mono[i] - sup[i]:+.1f} points; paper "
                   f"{PAPER_T3['MonoGAN'][i] - PAPER_T3['Fully supervised'][i]:+.1f}).")
    return "\n".join(out)


def plot(rows: dict[str, list[float | None]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, accs in rows.items():
        xs = [i for i, a in enumerate(accs) if a is not None]
        ax.plot(xs, [accs[i] for i in xs], marker="o", label=f"{label} (ours)")
        if label in PAPER_T3:
            ax.plot(range(4), PAPER_T3[label], linestyle=":", color=ax.lines[-1].get_color(), alpha=0.6)
    ax.set_xticks(range(4), LAYERS)
    ax.set_ylabel("CIFAR-10 linear probe top-1 (%)")
    ax.set_title("Ours (solid) vs paper Table 3 (dotted)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def git_rev() -> str:
    """Short commit of the code that runs, ``+dirty`` with uncommitted changes to tracked files outside
    docs/ (the pipeline rewrites docs/results.md itself as probes finish)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD")
    return (rev + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ":(top,exclude)docs") else "")) if rev else "unknown"


def collect(cfg: ReproConfig, plan, labels_from: str) -> dict[str, list[float | None]]:
    rows = {}
    for name, _, res in plan:
        if res and os.path.isfile(os.path.join(res, "probe.json")):
            rows[name.removeprefix(labels_from)] = layer_accuracies(res)
    return rows


# What the numbers mean at this budget, and what would change them (never tuned toward the paper).
READING = """
The budget is what separates these rows from the paper's, not the protocol: the probes run the paper's
full 36-epoch schedule on the same encoder for every method. A CPU budget of minutes buys a few hundred
MonoGAN generator steps (each is five critic steps with a double-backward gradient penalty), against the
order of 10^5 generator steps of the WGAN-GP reference recipe the paper follows; supervised training gets
several epochs of CIFAR-10 in the same time. We expect MonoGAN's rows to rise with longer training,
slowly on a CPU: tripling its budget by hand moved them by at most 2 points (`docs/results-longer.md`),
so the relative order of MonoGAN and supervised at conv1/conv2 is for a GPU run (the same command with
`--device cuda` and a far larger `--train-minutes`) to settle; the gap to Random is the signal that
survives this budget.
"""

# Why Table 1 needs a larger budget than Table 3's ordering (static: the numbers above speak for themselves).
ABLATION_READING = """
At the default 3 minutes each cell trains for a fraction of one pass over its patches (the table above
gives the generator steps each reached: about a hundred on 2 CPU cores). Table 1's differences are
differences in the data the generator must imitate, and we believe that after so few steps the critic
has not yet been driven to the detail that rescaling, rotation or jitter add, so the cells end close to
one another and most differences are no larger than the spread between two seeds of the same cell.
Nothing here was tuned to move them. What would settle Table 1 is a budget at which MonoGAN alone
separates from Random by much more than that spread: `--ablation-minutes 30` or more on this CPU (about
5 hours for the nine runs), or the same command with `--device cuda`.
"""


def training_table(runs: list[tuple[str, str, str]]) -> str:
    """Steps and epochs each (label, run folder, unit note) reached in its budget, from its log and checkpoint."""
    lines = ["| run | optimisation steps | epochs completed | training seconds |", "|---|---:|---:|---:|"]
    for label, run_dir, note in runs:
        log = os.path.join(run_dir, "log.jsonl")
        if not os.path.isfile(log):
            continue
        with open(log) as f:
            rows = [json.loads(line) for line in f][1:]
        ck = [r for r in rows if r.get("event") == "checkpoint"]
        if ck:
            import torch  # only here: the report itself needs no torch

            spent = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu",
                               weights_only=False).get("train_seconds", 0.0)
            lines.append(f"| {label} | {ck[-1]['step']:,}{note} | {ck[-1].get('epochs_done', '–')} | "
                         f"{spent:.0f} |")
    return "\n".join(lines) + "\n"


def main_effects(rows: dict[str, list[float | None]]) -> dict[str, list[float]] | None:
    """Per augmentation and layer: mean of the four Table 1 cells with it minus the four without it."""
    if not all(rows.get(c) and None not in rows[c] for c in ABLATION_CELLS):
        return None
    effects = {}
    for k, name in enumerate(AUGMENTATIONS):
        on = [rows[c] for c, flags in ABLATION_CELLS.items() if flags[k]]
        off = [rows[c] for c, flags in ABLATION_CELLS.items() if not flags[k]]
        effects[name] = [sum(r[i] for r in on) / len(on) - sum(r[i] for r in off) / len(off)
                         for i in range(len(LAYERS))]
    return effects


def ablation_verdict(rows: dict[str, list[float | None]]) -> str:
    """What Table 1 claims (section 4.1), checked against the measured cells, with the seed spread as yardstick."""
    ours, paper = main_effects(rows), main_effects(PAPER_T1)
    if ours is None:
        return "Not every Table 1 cell was measured: no verdict.\n"
    out = []
    j, j2 = rows.get("(j) All"), rows.get(SEED_CELL)
    spread = None
    if j2 and None not in j2:
        gaps = [abs(a - b) for a, b in zip(j, j2)]
        spread = max(gaps)
        out.append(f"- Seed spread: two training seeds of cell (j) land {' / '.join(f'{g:.1f}' for g in gaps)} "
                   f"points apart (conv1…conv4). One pair of seeds is a rough yardstick, not an error bar: "
                   f"below is marked *within noise* what is smaller than {spread:.1f} points.")

    def mark(v: float) -> str:  # "+ 0.0": a difference that rounds to -0.0 prints as +0.0
        return f"{round(v, 1) + 0.0:+.1f}" + (" *within noise*" if spread is not None and abs(v) < spread else "")

    out.append("- Main effect of each augmentation (mean of the four cells with it minus the four without; "
               "ours vs paper):\n\n" + table(ours, paper, "augmentation", mark, lambda p: f"{p:+.1f}"))
    early = {a: (v[0] + v[1]) / 2 for a, v in ours.items()}
    top = max(early, key=early.get)
    out.append(f"- The paper finds scale the most important single augmentation. Here the largest conv1/conv2 "
               f"effect is **{top}** ({mark(early[top])} points on average): "
               + ("as in the paper." if top == "scale" else "the paper's finding does **not** show at this budget."))
    rand, none_ = rows.get("(b) Random feat."), rows.get("(c) No aug.")
    if rand and none_:
        d = [none_[i] - rand[i] for i in range(2)]
        pd = [PAPER_T1["(c) No aug."][i] - PAPER_T1["(b) Random feat."][i] for i in range(2)]
        out.append(f"- No augmentation vs random features at conv1/conv2: {mark(d[0])} / {mark(d[1])} points "
                   f"(paper {pd[0]:+.1f} / {pd[1]:+.1f}: \"only marginally better\").")
    means = {c: sum(rows[c]) / len(LAYERS) for c in ABLATION_CELLS}
    best = max(means, key=means.get)
    out.append(f"- Best cell on the mean of conv1…conv4: **{best}** ({means[best]:.1f}; (j) All {means['(j) All']:.1f}); "
               f"in the paper (j) All is best ({sum(PAPER_T1['(j) All']) / len(LAYERS):.1f}).")
    return "\n".join(out) + "\n"


def plot_ablation(rows: dict[str, list[float | None]], path: str) -> None:
    """Grouped bars per Table 1 cell (conv1…conv4, ours), the paper's values as black ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [k for k in rows if k in PAPER_T1 or k == SEED_CELL]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=120)
    width = 0.2
    for i, layer in enumerate(LAYERS):
        xs = [c + (i - 1.5) * width for c in range(len(labels))]
        ax.bar(xs, [rows[k][i] or 0 for k in labels], width, label=f"{layer} (ours)")
        paper = [(x, PAPER_T1[k][i]) for x, k in zip(xs, labels) if k in PAPER_T1]
        ax.scatter([x for x, _ in paper], [v for _, v in paper], marker="_", s=120, color="black",
                   label="paper" if i == 0 else None, zorder=3)
    ax.set_xticks(range(len(labels)), [k.replace(" ", "\n", 1) for k in labels], fontsize=7)
    ax.set_ylim(40, 80)
    ax.set_ylabel("CIFAR-10 linear probe top-1 (%)")
    ax.set_title("Table 1 augmentation ablation: ours (bars) vs paper (black ticks)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=5)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(cfg: ReproConfig, main_rows, abl_rows, records: dict[str, dict]) -> None:
    """Write the results Markdown and figure from every probe that has finished."""
    budget = (f"{cfg.train_seconds / 60:g} min of wall-clock training per method on the CPU, "
              f"D = {cfg.count:,} patches, probes {cfg.probe_epochs} epochs ({cfg.schedule} schedule"
              f"{', scaled to the shorter run' if cfg.probe_epochs != 36 else ''}), batch {cfg.batch_size}")
    parts = [
        "# Reproduction at reduced scale on the CPU\n",
        f"Written by `make {'repro-ablation-cpu' if cfg.ablation else 'repro-cpu'}` (`python -m probe.repro`) "
        f"at commit `{git_rev()}` on {machine()}, {time.strftime('%Y-%m-%d')}; the commit that ran each step "
        f"is in the Time table.\n",
        f"Budget: {budget}. Small encoder of the paper's section 4.2 for every method; linear probes on "
        f"CIFAR-10 (the JPEG q75 copy in `../shared/data`, see its README) with no dimensionality reduction.\n",
        "## Table 3 layout (CIFAR-10)\n",
        table(main_rows, PAPER_T3) if main_rows else "_no probe has finished yet_\n",
        "## Does the paper's ordering hold?\n",
        verdict(main_rows) + "\n",
        "## Training done within the budget\n",
        training_table([(label, os.path.join(cfg.work, "runs", slug(label)),
                         " (generator steps)" if label == "MonoGAN" else "")
                        for label in ("MonoGAN", "Fully supervised", "RotNet")]),
        READING,
    ]
    if abl_rows:
        baselines = {"(a) Fully sup.": main_rows.get("Fully supervised"), "(b) Random feat.": main_rows.get("Random")}
        abl_rows = {k: v for k, v in baselines.items() if v} | abl_rows
        each = f"{cfg.ablation_steps} generator steps" if cfg.ablation_steps else f"{cfg.ablation_seconds / 60:g} min"
        parts += [f"## Table 1 layout: augmentation ablation (MonoGAN, {each} each)\n",
                  table(abl_rows, PAPER_T1),
                  f"![Table 1 ablation]({os.path.basename(ablation_png(cfg))})\n",
                  "### What Table 1 claims, checked\n", ablation_verdict(abl_rows),
                  "### MonoGAN training done per cell (generator steps)\n",
                  training_table([(c, ablation_run_dir(cfg, c), "") for c in [*ABLATION_CELLS, SEED_CELL]]),
                  ABLATION_READING]
    total = sum(r["seconds"] for r in records.values())
    parts += ["## Time\n", "| step | seconds | commit |\n|---|---:|---|\n"
              + "".join(f"| {k} | {r['seconds']:.0f} | {r.get('commit', 'not recorded')} |\n"
                        for k, r in records.items())
              + f"| **total** | **{total:.0f}** ({total / 60:.1f} min) | |\n",
              "## Configuration\n", "```json\n" + json.dumps(asdict(cfg), indent=1, sort_keys=True) + "\n```\n"]
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    with open(cfg.out, "w") as f:
        f.write("\n".join(parts))
    if main_rows:
        plot(main_rows, os.path.splitext(cfg.out)[0] + ".png")
    if abl_rows:
        plot_ablation(abl_rows, ablation_png(cfg))


def ablation_png(cfg: ReproConfig) -> str:
    return os.path.splitext(cfg.out)[0] + "-ablation.png"


def run_repro(cfg: ReproConfig) -> dict:
    """Run (or resume) the whole pipeline and write the results; returns the measured rows."""
    data = cifar_root(cfg)
    plan = main_plan(cfg, data) + (ablation_plan(cfg, data) if cfg.ablation else [])
    records = {}
    for i, (name, argv, _) in enumerate(plan, 1):
        records[name] = step(cfg, name, argv, f"[{i}/{len(plan)}]")
        if name.startswith("probe"):  # refresh the report as results arrive
            write_results(cfg, collect(cfg, main_plan(cfg, data), "probe "),
                          collect(cfg, ablation_plan(cfg, data), "probe ") if cfg.ablation else {}, records)
    main_rows = collect(cfg, main_plan(cfg, data), "probe ")
    abl_rows = collect(cfg, ablation_plan(cfg, data), "probe ") if cfg.ablation else {}
    write_results(cfg, main_rows, abl_rows, records)
    return {"main": main_rows, "ablation": abl_rows, "seconds": {k: r["seconds"] for k, r in records.items()}}


@click.command()
@click.option("--images", envvar="IMAGES", default="../shared/data/images", show_default=True,
              help="Folder with the paper's images (animals.png = Image B). Env: IMAGES.")
@click.option("--cifar", envvar="CIFAR", default="../shared/data/cifar10-jpg.tar.gz", show_default=True,
              help="CIFAR-10 JPEG tarball or ImageFolder with train/ and test/. Env: CIFAR.")
@click.option("--image", default="B", show_default=True,
              help="Source image: B (the paper's, looked up in --images) or an image file.")
@click.option("--work", default=ReproConfig.work, show_default=True, help="Working folder (resumable).")
@click.option("--out", default=ReproConfig.out, show_default=True, help="Results Markdown (+ .png beside).")
@click.option("--count", default=ReproConfig.count, show_default=True, type=click.IntRange(1))
@click.option("--train-minutes", default=ReproConfig.train_seconds / 60, show_default=True, type=float)
@click.option("--ablation-minutes", default=ReproConfig.ablation_seconds / 60, show_default=True, type=float)
@click.option("--ablation-steps", default=0, show_default=True, type=click.IntRange(0),
              help="Train each Table 1 cell this many generator steps instead of --ablation-minutes "
                   "(equal training per cell whatever the machine's speed does meanwhile).")
@click.option("--probe-epochs", default=ReproConfig.probe_epochs, show_default=True, type=click.IntRange(1))
@click.option("--schedule", default="paper", type=click.Choice(["paper", "released"]), show_default=True)
@click.option("--batch-size", default=ReproConfig.batch_size, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=ReproConfig.workers, show_default=True, type=click.IntRange(0))
@click.option("--seed", default=0, show_default=True)
@click.option("--rotnet/--no-rotnet", default=True, show_default=True)
@click.option("--ablation", is_flag=True, help="Also run Table 1's eight augmentation cells.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--amp", default=ReproConfig.amp, show_default=True,
              type=click.Choice(["default", "cuda", "on", "off"]),
              help="--amp of every train and probe command (default: each command's own, as before this option).")
@click.option("--channels-last/--no-channels-last", default=ReproConfig.channels_last, show_default=True,
              help="Train with --channels-last.")
@click.option("--monogan-steps", default=0, show_default=True, type=click.IntRange(0),
              help="Table 3's MonoGAN trains this many generator steps instead of --train-minutes.")
@click.option("--full-schedules", is_flag=True,
              help="Supervised and RotNet train their own --epochs schedules instead of --train-minutes.")
def cli(images, image, cifar, work, out, count, train_minutes, ablation_minutes, ablation_steps, probe_epochs,
        schedule, batch_size, workers, seed, rotnet, ablation, device, amp, channels_last, monogan_steps,
        full_schedules) -> None:
    """Reproduce Table 3 (and with --ablation, Table 1) at reduced scale: render, train, probe, report."""
    if not os.path.isdir(images):
        raise click.ClickException(f"{images}: no such folder; pass IMAGES=folder/with/animals.png")
    cfg = ReproConfig(images=os.path.abspath(images), image=image, cifar=os.path.abspath(cifar), work=work, out=out,
                      count=count, train_seconds=train_minutes * 60, ablation_seconds=ablation_minutes * 60,
                      ablation_steps=ablation_steps,
                      probe_epochs=probe_epochs, schedule=schedule, batch_size=batch_size, workers=workers,
                      seed=seed, rotnet=rotnet, ablation=ablation, device=device, amp=amp,
                      channels_last=channels_last, monogan_steps=monogan_steps, full_schedules=full_schedules)
    t0 = time.time()
    rows = run_repro(cfg)
    click.echo(f"wrote {out} ({len(rows['main'])} methods, {len(rows['ablation'])} ablation cells) in "
               f"{(time.time() - t0) / 60:.1f} min", err=True)


if __name__ == "__main__":
    cli()
