"""`make repro-cpu`: the paper's central CIFAR-10 result (Table 3) at reduced scale, in one command.

Steps, each skipped when its output exists (re-running resumes):

1. extract CIFAR-10 (the JPEG ImageFolder tarball of ../shared/data) unless a folder is given;
2. render Image B at S = 32 (``--preset cifar``, D = 50,000) and pack CIFAR-10 train as a shard set
   (``augment pack``: the images unchanged, for RotNet's CIFAR-10 row);
3. per row, train the small encoder of section 4.2 with the same budget, then probe it: a random
   initialisation, MonoGAN on the Image B set, fully supervised on CIFAR-10 train, RotNet on CIFAR-10
   train (the paper's RotNet row) and on the Image B set (no paper row); ``--methods simclr,dino`` adds
   SimCLR and DINO on the Image B set;
4. linear probes on CIFAR-10, conv1..conv4;
5. ``docs/results.md`` and ``docs/results.png``: each row beside the paper's row for the same setting only,
   and every protocol fact read back from what the runs recorded (``probe/runfacts.py``).

``--ablation`` renders Table 1's eight augmentation cells, trains MonoGAN on each with a smaller budget
(cell (j) twice, with two training seeds, as a yardstick for noise) and probes them, adding a Table 1
section, the main effect of each augmentation and ``docs/results-ablation.png`` to the same results.
Every step runs as a subprocess through the project's own command line, so what this measures is exactly
what a user runs. Paths are recorded as given (relative to the project when run from its root).
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

from probe import runfacts

LAYERS = ["conv1", "conv2", "conv3", "conv4"]
# Paper, Table 3 (CIFAR-10 columns) and Table 1.
PAPER_T3 = {
    "Fully supervised": [66.5, 70.1, 72.4, 75.9],
    "Random": [57.8, 55.5, 54.2, 47.3],
    "RotNet": [64.4, 65.6, 65.6, 59.1],
    "GAN (CIFAR-10)": [67.7, 73.0, 72.5, 69.2],
    "MonoGAN": [68.1, 72.3, 70.8, 63.5],
}
# Our rows, named by what they trained on.
SUPERVISED, RANDOM, MONOGAN = "Fully supervised (CIFAR-10)", "Random", "MonoGAN (Image B)"
ROTNET_CIFAR, ROTNET_B = "RotNet (CIFAR-10)", "RotNet (Image B)"
# Each of our rows beside the paper's row for the same setting, and that row in words; rows not here
# (RotNet on Image B, SimCLR, DINO) have no paper value.
PAPER_ROW = {
    SUPERVISED: ("Fully supervised", "Fully supervised on CIFAR-10 train, a converged baseline (the paper "
                                     "states no training length)"),
    RANDOM: ("Random", "Random initialisation"),
    ROTNET_CIFAR: ("RotNet", "RotNet on CIFAR-10 train (§4.3: \"the same architecture trained on the full "
                             "CIFAR-10 training set using RotNet\")"),
    MONOGAN: ("MonoGAN", "MonoGAN on Image B (§4.2)"),
}
# --methods: the modern methods on the Image B set, on the small encoder; sizes chosen for a CPU budget
# of minutes (recorded in every run's log): DINO with 2 local views and a 4,096-way head, SimCLR with a
# 512-wide projector.
EXTRA_METHODS = {
    "simclr": ("SimCLR (Image B)", ["train.simclr", "--arch", "small", "--proj-hidden", "512"]),
    "dino": ("DINO (Image B)", ["train.dino", "--arch", "small", "--local-crops", "2", "--out-dim", "4096",
                                "--hidden", "512", "--bottleneck", "128"]),
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
    images: str                      # folder holding the paper's images (animals.png = Image B), as given
    cifar: str                       # CIFAR-10 JPEG tarball or extracted ImageFolder (train/, test/), as given
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
    methods: tuple[str, ...] = ()    # extra rows: simclr, dino (EXTRA_METHODS)
    ablation: bool = False
    device: str = "cpu"
    # The faster path by default: bf16 where the CPU has it natively (fp32 elsewhere, in one line), as
    # bf16 moved MonoGAN's and RotNet's probes by less than the spread of 2 and 4 seeds (docs/benchmarks.md,
    # Precision). "default": each command's own --amp (fp32 on the CPU), the argv of work folders made
    # before this default, such as the one behind the committed docs/results.md.
    amp: str = "on"
    channels_last: bool = True
    monogan_steps: int = 0           # if > 0: Table 3's MonoGAN trains this many generator steps
    full_schedules: bool = False     # supervised and RotNet train their own --epochs schedules
    finetune: bool = False           # then Tables 4 and 5 and Figs. 3 and 5 from these checkpoints (probe.finetune)
    finetune_out: str = "docs/results-finetune.md"


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
                f"step {name!r} was done in {cfg.work} with other arguments ({argv_change(rec['argv'], argv)}); "
                f"give the options it was run with, use a new --work folder, or delete {marker} and that step's "
                f"outputs to redo it")
        click.echo(f"{progress} {name}: done earlier ({rec['seconds']:.0f} s), skipped", err=True)
        return rec
    click.echo(f"{progress} {name}: {' '.join(argv)}", err=True)
    # the subprocess gets an absolute image folder; the records keep the paths as given
    env = os.environ | {"SOURCE_IMAGE_DIR": os.path.abspath(cfg.images), "PYTHONUNBUFFERED": "1"}
    t0, load0 = time.time(), os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-m", *argv], env=env)
    if proc.returncode != 0:
        raise click.ClickException(f"step {name!r} failed (exit {proc.returncode}); fix the error above and "
                                   f"re-run: finished steps are skipped")
    # the machine's load beside the time: a time budget on a shared machine buys fewer steps
    rec = {"name": name, "argv": argv, "seconds": time.time() - t0, "commit": git_rev(),
           "load": [round(load0, 1), round(os.getloadavg()[0], 1)]}
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker + ".partial", "w") as f:
        json.dump(rec, f)
    os.replace(marker + ".partial", marker)
    return rec


def argv_change(before: list[str], now: list[str]) -> str:
    """What differs between two command lines, option by option: ``--amp: (none) -> on``."""
    def options(argv: list[str]) -> dict[str, str]:
        out, key = {"(command)": argv[0] if argv else ""}, None
        for a in argv[1:]:
            if a.startswith("--"):
                key = a
                out[key] = ""
            elif key is not None:
                out[key] = (out[key] + " " + a).strip()
        return out

    a, b = options(before), options(now)
    diff = [f"{k}: {a.get(k, '(none)') or '(flag)'} -> {b.get(k, '(none)') or '(flag)'}"
            for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    return "; ".join(diff) or "the same options in another order"


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


def source_name(cfg: ReproConfig) -> str:
    """How rows trained on the rendered set are named: Image B, or the image file's name."""
    return "Image B" if cfg.image.upper() == "B" else os.path.basename(cfg.image)


def row_commands(cfg: ReproConfig) -> dict[str, list[str] | None]:
    """Row label -> its training command before the common flags (None: the random initialisation)."""
    b = os.path.join(cfg.work, "sets", "B-cifar")
    name, batch = source_name(cfg), ["--batch-size", str(cfg.batch_size)]
    out: dict[str, list[str] | None] = {
        RANDOM: None,
        MONOGAN.replace("Image B", name): ["train.monogan", "--shards", b, *batch],
        SUPERVISED: ["train.supervised", "--dataset", "imagefolder", "--data", "{data}", "--arch", "small", *batch],
    }
    if cfg.rotnet:
        rot = ["train.rotnet", "--arch", "small", "--crop", "28", *batch]
        out[ROTNET_CIFAR] = [*rot[:1], "--shards", cifar_set(cfg), *rot[1:]]
        out[ROTNET_B.replace("Image B", name)] = [*rot[:1], "--shards", b, *rot[1:]]
    for m in cfg.methods:
        label, argv = EXTRA_METHODS[m]
        out[label.replace("Image B", name)] = [*argv[:1], "--shards", b, *argv[1:], *batch]
    return out


def cifar_set(cfg: ReproConfig) -> str:
    return os.path.join(cfg.work, "sets", "cifar10-train")


def paper_row(cfg: ReproConfig, label: str) -> tuple[str, str] | None:
    """(the paper's Table 3 row, its setting in words) for the same setting as our row, else None."""
    if cfg.image.upper() != "B" and label == MONOGAN.replace("Image B", source_name(cfg)):
        return None
    return PAPER_ROW.get(label)


def run_dir(cfg: ReproConfig, label: str) -> str:
    return os.path.join(cfg.work, "runs", slug(label))


def probe_dir(cfg: ReproConfig, label: str) -> str:
    return os.path.join(cfg.work, "probes", slug(label))


def main_plan(cfg: ReproConfig, data: str) -> list[tuple[str, list[str], str | None]]:
    """(step name, argv, probe result folder or None) for the Table 3 pipeline: the sets, then per row its
    training and its probe (so a stopped pipeline has whole rows)."""
    plan = [("render Image B", render_args(cfg, os.path.join(cfg.work, "sets", "B-cifar")), None)]
    if cfg.rotnet:
        plan.append(("pack CIFAR-10 train", ["augment", "pack", os.path.join(data, "train"), "--out",
                                             cifar_set(cfg), "--seed", str(cfg.seed)], None))
    for label, argv in row_commands(cfg).items():
        out = run_dir(cfg, label)
        if argv is None:
            plan.append((f"init {label}", ["train.random", "--arch", "small", "--seed", str(cfg.seed),
                                           "--out", out], None))
        else:
            argv = [data if a == "{data}" else a for a in argv]
            gan = argv[0] == "train.monogan"
            plan.append((f"train {label}", argv + train_common(cfg, out, cfg.train_seconds,
                                                               steps=cfg.monogan_steps if gan else 0,
                                                               full=cfg.full_schedules and not gan), None))
        res = probe_dir(cfg, label)
        plan.append((f"probe {label}", probe_args(cfg, os.path.join(out, "checkpoint.pt"), res, data), res))
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


def main_table(cfg: ReproConfig, accs: dict[str, list[float | None]], facts: dict) -> str:
    """Table 3 rows: ours beside the paper's row for the same setting only (– where the paper has none),
    with what each row's training reached and which paper row it is compared with."""
    head = "| Row (trained on) | training here | " + " | ".join(f"{l} (ours) | {l} (paper)" for l in LAYERS)
    head += " | compared with the paper's row |\n|---|---|" + "---:|---:|" * len(LAYERS) + "---|\n"
    lines = []
    for label, acc in accs.items():
        ref = paper_row(cfg, label)
        vals = PAPER_T3[ref[0]] if ref else [None] * len(LAYERS)
        cells = " | ".join(f"{_fmt(a)} | {_fmt(p)}" for a, p in zip(acc, vals))
        lines.append(f"| {label} | {training_cell(label, facts.get(label))} | {cells} | "
                     f"{ref[1] if ref else 'none: the paper has no row for this setting'} |")
    return head + "\n".join(lines) + "\n"


def training_cell(label: str, f: runfacts.TrainFacts | None) -> str:
    """Epochs and steps a row's training reached, from its log."""
    if label == RANDOM:
        return "none (random initialisation)"
    if f is None:
        return runfacts.NOT_RECORDED
    unit = " generator" if f.method == "monogan" else ""
    return f"{plural(f.epochs_done, 'epoch')} ({plural(f.steps, unit.strip() + ' step' if unit else 'step')})"


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def verdict(cfg: ReproConfig, accs: dict[str, list[float | None]], facts: dict) -> str:
    """Does the paper's ordering hold? MonoGAN conv1/conv2 above Random, and its gap to supervised (whose
    training length is stated: the paper's is a converged baseline)."""
    mono_label = MONOGAN.replace("Image B", source_name(cfg))
    mono, rand, sup = accs.get(mono_label), accs.get(RANDOM), accs.get(SUPERVISED)
    if not (mono and rand and sup):
        return f"Not all of {mono_label}, {RANDOM} and {SUPERVISED} were measured: no verdict."
    s = facts.get(SUPERVISED)
    sup_len = f"{plural(s.epochs_done, 'epoch')} here" if s else "training length not recorded"
    out = []
    for i, layer in enumerate(LAYERS[:2]):
        above = mono[i] > rand[i]
        out.append(f"- {layer}: {mono_label} {mono[i]:.1f} vs Random {rand[i]:.1f} ({mono[i] - rand[i]:+.1f}): "
                   f"{'above, as in the paper' if above else 'NOT above: the paper ordering does not hold here'}; "
                   f"{SUPERVISED} ({sup_len}) {sup[i]:.1f}, {mono_label} {mono[i] - sup[i]:+.1f} points "
                   f"(paper, against its converged baseline: "
                   f"{PAPER_T3['MonoGAN'][i] - PAPER_T3['Fully supervised'][i]:+.1f}).")
    out.append("- This command trains each row once: how far two seeds of one row land apart is not measured "
               "here (`--ablation` measures it for MonoGAN), so small differences are not evidence either way.")
    return "\n".join(out)


def plot(cfg: ReproConfig, accs: dict[str, list[float | None]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for label, acc in accs.items():
        xs = [i for i, a in enumerate(acc) if a is not None]
        ax.plot(xs, [acc[i] for i in xs], marker="o", label=f"{label} (ours)")
        if ref := paper_row(cfg, label):
            ax.plot(range(4), PAPER_T3[ref[0]], linestyle=":", color=ax.lines[-1].get_color(), alpha=0.6)
    ax.set_xticks(range(4), LAYERS)
    ax.set_ylabel("CIFAR-10 linear probe top-1 (%)")
    ax.set_title("Ours (solid) vs the paper's row for the same setting (dotted)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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


# Options worth naming beside each method's row (those its log records; the full config is in the log).
NOTABLE = {"rotnet": ("crop", "crop_mode", "fc_dropout", "variant"), "monogan": ("g_width", "n_critic", "variant"),
           "supervised": ("milestones", "lr"), "simclr": ("temperature", "proj_hidden"),
           "dino": ("local_crops", "out_dim", "hidden", "bottleneck")}


def training_table(runs: list[tuple[str, str]], probes: dict[str, dict | None]) -> str:
    """What each (label, run folder) trained on and reached, all read from its log (and its probe's
    record of the encoder)."""
    lines = ["| row | command | trained on | encoder | batch | precision | budget | reached | training seconds | "
             "options |", "|---|---|---|---|---:|---|---|---|---:|---|"]
    for label, folder in runs:
        f = runfacts.train_facts(folder)
        if f is None:
            continue
        spec = ((probes.get(label) or {}).get("checkpoint") or {}).get("encoder_spec") or {}
        opts = ", ".join(f"{k} {f.config[k]}" for k in NOTABLE.get(f.method, ()) if k in f.config)
        lines.append(f"| {label} | `train.{f.method}` | {runfacts.trained_on(f)} | {spec.get('arch', '?')} | "
                     f"{f.config.get('batch_size', '?')} | {f.precision} | {runfacts.budget(f)} | "
                     f"{training_cell(label, f)} | "
                     f"{f.seconds:.0f} | {opts or '–'} |")
    return "\n".join(lines) + "\n"


def probes_table(probes: dict[str, dict | None]) -> str:
    """The protocol each probe ran (from its probe.json); rows that ran the same protocol share a line."""
    groups: dict[tuple, list[str]] = {}
    for label, res in probes.items():
        if res:
            groups.setdefault(tuple(runfacts.probe_protocol(res).items()), []).append(label)
    if not groups:
        return "_no probe has finished yet_\n"
    keys = [k for k, _ in next(iter(groups))]
    lines = ["| rows | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for proto, labels in groups.items():
        lines.append(f"| {', '.join(labels)} | " + " | ".join(v for _, v in proto) + " |")
    return "\n".join(lines) + "\n"


def reading(cfg: ReproConfig, accs: dict, facts: dict, probes: dict) -> str:
    """What the measured rows can and cannot say, every number read from the runs' records."""
    budgets = {runfacts.budget(f) for f in facts.values() if f}
    protocols = {tuple(runfacts.probe_protocol(r).items()) for r in probes.values() if r}
    out = [f"- Training budgets: {'every trained row had ' + budgets.pop() if len(budgets) == 1 else 'they differ (table above)'}; "
           f"probes: {'every row ran the same protocol' if len(protocols) == 1 else 'the protocols differ (table above)'}."
           if budgets and protocols else "- Not every row has finished: no reading yet."]
    for label, acc in accs.items():
        ref = paper_row(cfg, label)
        if not ref or label == RANDOM or None in acc:
            continue
        f = facts.get(label)
        gaps = " / ".join(f"{a - p:+.1f}" for a, p in zip(acc, PAPER_T3[ref[0]]))
        out.append(f"- {label}: ours minus the paper's {ref[0]} row, conv1…conv4: {gaps} points, after "
                   f"{training_cell(label, f)} of training here.")
    if SUPERVISED in facts and facts[SUPERVISED]:
        out.append(f"- The supervised row trained {plural(facts[SUPERVISED].epochs_done, 'epoch')} within its budget; the "
                   f"paper's row is a converged baseline, so its gap above compares those epochs with a "
                   f"converged run, not two runs of one recipe.")
    return "\n".join(out) + "\n"


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
    """Write the results Markdown and figure from every probe that has finished; each fact about a run
    comes from that run's records."""
    labels = list(row_commands(cfg))
    facts = {label: runfacts.train_facts(run_dir(cfg, label)) for label in labels if label != RANDOM}
    probes = {label: runfacts.probe_facts(probe_dir(cfg, label)) for label in labels}
    png = os.path.splitext(cfg.out)[0] + ".png"
    parts = [
        "# Reproduction at reduced scale on the CPU\n",
        f"Written by `make {'repro-ablation-cpu' if cfg.ablation else 'repro-cpu'}` (`python -m probe.repro`) "
        f"at commit `{git_rev()}` on {machine()}, {time.strftime('%Y-%m-%d')}; the commit that ran each step "
        f"is in the Time table. Every fact about a run below (data, budget, steps, epochs, encoder, probe "
        f"protocol) is read from that run's own records: its log, its shard set's manifest, its probe.json.\n",
        "## Table 3 layout (CIFAR-10)\n",
        main_table(cfg, main_rows, facts) if main_rows else "_no probe has finished yet_\n",
        f"![Table 3 layout]({os.path.basename(png)})\n" if main_rows else "",
        "## Does the paper's ordering hold?\n", verdict(cfg, main_rows, facts) + "\n",
        "## What each row trained\n",
        training_table([(label, run_dir(cfg, label)) for label in labels if label != RANDOM], probes),
        "## The probes\n", probes_table(probes),
        "## Reading\n", reading(cfg, main_rows, facts, probes),
    ]
    parts += ablation_section(cfg, main_rows, abl_rows) if abl_rows else [
        "## Table 1 (augmentation ablation)\n", "Not run by this command; `--ablation` adds it.\n"]
    total = sum(r["seconds"] for r in records.values())
    parts += ["## Time\n", "load: the machine's 1-minute load average when the step started and when it ended "
              "(its core count is in the first line; a time budget buys fewer steps on a loaded machine).\n",
              "| step | seconds | commit | load |\n|---|---:|---|---|\n"
              + "".join(f"| {k} | {r['seconds']:.0f} | {r.get('commit', 'not recorded')} | "
                        f"{' → '.join(str(v) for v in r['load']) if 'load' in r else 'not recorded'} |\n"
                        for k, r in records.items())
              + f"| **total** | **{total:.0f}** ({total / 60:.1f} min) | | |\n",
              "## Configuration\n", "```json\n" + json.dumps(asdict(cfg), indent=1, sort_keys=True) + "\n```\n"]
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    with open(cfg.out, "w") as f:
        f.write("\n".join(p for p in parts if p))
    if main_rows:
        plot(cfg, main_rows, png)
    if abl_rows:
        plot_ablation(ablation_section_rows(main_rows, abl_rows), ablation_png(cfg))


def ablation_section_rows(main_rows: dict, abl_rows: dict) -> dict:
    """Table 1's rows: its two baselines (a), (b) are our supervised and random rows."""
    baselines = {"(a) Fully sup.": main_rows.get(SUPERVISED), "(b) Random feat.": main_rows.get(RANDOM)}
    return {k: v for k, v in baselines.items() if v} | abl_rows


def ablation_section(cfg: ReproConfig, main_rows: dict, abl_rows: dict) -> list[str]:
    """Table 1 beside the paper, the claims checked, and each cell's training as its log records it."""
    cells = [*ABLATION_CELLS, SEED_CELL]
    budgets = sorted({runfacts.budget(f) for c in cells if (f := runfacts.train_facts(ablation_run_dir(cfg, c)))})
    probes = {c: runfacts.probe_facts(os.path.join(cfg.work, "probes", f"ablation-{slug(c)}")) for c in cells}
    rows = ablation_section_rows(main_rows, abl_rows)
    return [f"## Table 1 layout: augmentation ablation (MonoGAN on Image B; budget per cell: "
            f"{'; '.join(budgets) or runfacts.NOT_RECORDED})\n",
            table(rows, PAPER_T1), f"![Table 1 ablation]({os.path.basename(ablation_png(cfg))})\n",
            "### What Table 1 claims, checked\n", ablation_verdict(rows),
            "### MonoGAN training done per cell\n",
            training_table([(c, ablation_run_dir(cfg, c)) for c in cells], probes),
            "### The cells' probes\n", probes_table(probes)]


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
    if cfg.finetune:
        from probe import finetune   # it builds on this module: imported here, not at the top

        finetune.run_finetune(finetune.from_repro(cfg, out=cfg.finetune_out), trained_by=cfg)
        click.echo(f"wrote {cfg.finetune_out}", err=True)
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
@click.option("--rotnet/--no-rotnet", default=True, show_default=True,
              help="The RotNet rows (CIFAR-10 train, and the Image B set).")
@click.option("--methods", default="", show_default=True,
              help=f"Extra rows on the Image B set, comma-separated: {', '.join(EXTRA_METHODS)} (off by default).")
@click.option("--ablation", is_flag=True, help="Also run Table 1's eight augmentation cells.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--amp", default=ReproConfig.amp, show_default=True,
              type=click.Choice(["default", "cuda", "on", "off"]),
              help="--amp of every train and probe command: on = bf16 where the CPU has it natively; default = "
                   "each command's own (fp32 on the CPU), as work folders made before bf16 became the default.")
@click.option("--channels-last/--no-channels-last", default=ReproConfig.channels_last, show_default=True,
              help="Train with --channels-last.")
@click.option("--monogan-steps", default=0, show_default=True, type=click.IntRange(0),
              help="Table 3's MonoGAN trains this many generator steps instead of --train-minutes.")
@click.option("--full-schedules", is_flag=True,
              help="Supervised and RotNet train their own --epochs schedules instead of --train-minutes.")
@click.option("--finetune", is_flag=True,
              help="Then Tables 4 and 5 and Figs. 3 and 5 from this run's checkpoints (probe.finetune's defaults, "
                   "in the same --work; docs/finetune.md).")
@click.option("--finetune-out", default=ReproConfig.finetune_out, show_default=True,
              help="The Tables 4 and 5 page (figures beside it).")
def cli(images, image, cifar, work, out, count, train_minutes, ablation_minutes, ablation_steps, probe_epochs,
        schedule, batch_size, workers, seed, rotnet, methods, ablation, device, amp, channels_last, monogan_steps,
        full_schedules, finetune, finetune_out) -> None:
    """Reproduce Table 3 (and with --ablation, Table 1) at reduced scale: render, train, probe, report."""
    if not os.path.isdir(images):
        raise click.ClickException(f"{images}: no such folder; pass IMAGES=folder/with/animals.png")
    extra = tuple(m.strip() for m in methods.split(",") if m.strip())
    if unknown := [m for m in extra if m not in EXTRA_METHODS]:
        raise click.BadParameter(f"{', '.join(unknown)}: not a method here; use {', '.join(EXTRA_METHODS)}",
                                 param_hint="--methods")
    cfg = ReproConfig(images=images, image=image, cifar=cifar, work=work, out=out, methods=extra,
                      count=count, train_seconds=train_minutes * 60, ablation_seconds=ablation_minutes * 60,
                      ablation_steps=ablation_steps,
                      probe_epochs=probe_epochs, schedule=schedule, batch_size=batch_size, workers=workers,
                      seed=seed, rotnet=rotnet, ablation=ablation, device=device, amp=amp,
                      channels_last=channels_last, monogan_steps=monogan_steps, full_schedules=full_schedules,
                      finetune=finetune, finetune_out=finetune_out)
    t0 = time.time()
    rows = run_repro(cfg)
    click.echo(f"wrote {out} ({len(rows['main'])} methods, {len(rows['ablation'])} ablation cells) in "
               f"{(time.time() - t0) / 60:.1f} min", err=True)


if __name__ == "__main__":
    cli()
