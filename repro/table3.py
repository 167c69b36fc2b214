"""Table 3 at reduced scale (``python -m repro table3``, ``make repro-cpu``): the paper's central CIFAR-10 result.

The plan: extract CIFAR-10 (unless a folder is given); render Image B at S = 32 (``--preset cifar``,
D = 50,000) and pack CIFAR-10 train unchanged (``augment pack``, RotNet's full-data row); then for every
row and every seed, train the small encoder of §4.2 for the row's step budget and probe conv1..conv4 on
CIFAR-10. Rows, named by what they trained on: Random (a seeded initialisation), MonoGAN (Image B), Fully
supervised (CIFAR-10), RotNet (CIFAR-10), RotNet (Image B), and with ``--methods`` SimCLR and DINO on the
Image B set. ``rows`` reads back whatever has finished; ``readings`` says what the numbers allow, from
the seed spreads (``repro.stats``); ``write_page`` renders both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from probe.paper import LAYERS as PAPER_LAYERS, TABLE3
from repro import records, report
from repro.config import EXTRA_METHODS, ReproConfig
from repro.stats import ABOVE, BELOW, Spread, direction, per_layer
from repro.steps import Step, cifar_root, run_with_page, slug

LAYERS = PAPER_LAYERS["table3"]
SUPERVISED, RANDOM, MONOGAN = "Fully supervised (CIFAR-10)", "Random", "MonoGAN (Image B)"
ROTNET_CIFAR, ROTNET_B = "RotNet (CIFAR-10)", "RotNet (Image B)"
# Each of our rows beside the paper's row for the same setting (a key of probe.paper.TABLE3), and that
# setting in words; rows not here (RotNet on Image B, SimCLR, DINO) have no paper value.
PAPER_ROW = {
    SUPERVISED: ("supervised", "Fully supervised on CIFAR-10 train, a converged baseline (the paper states no "
                               "training length)"),
    RANDOM: ("random", "Random initialisation"),
    ROTNET_CIFAR: ("rotnet", "RotNet on CIFAR-10 train (§4.3: \"the same architecture trained on the full "
                             "CIFAR-10 training set using RotNet\"), the full-data reference"),
    MONOGAN: ("monogan", "MonoGAN on Image B (§4.2)"),
}


@dataclass(frozen=True)
class RowSpec:
    """A row of the table: its label, its method, and its training command before the common flags
    (empty for the random initialisation); ``{data}`` stands for the CIFAR-10 root."""

    label: str
    method: str
    argv: tuple[str, ...]
    single_image: bool


@dataclass(frozen=True)
class Row:
    """A measured row: per layer the spread over the seeds that finished, and each seed's records."""

    spec: RowSpec
    layers: list[Spread | None]
    seeds: tuple[int, ...]
    facts: tuple[records.TrainFacts | None, ...]
    paper: list[float | None] | None
    setting: str

    @property
    def label(self) -> str:
        return self.spec.label


def source_name(cfg: ReproConfig) -> str:
    """How rows trained on the rendered set are named: Image B, or the image file's name."""
    return "Image B" if cfg.image.upper() == "B" else os.path.basename(cfg.image)


def image_set(cfg: ReproConfig) -> str:
    return os.path.join(cfg.work, "sets", "B-cifar")


def cifar_set(cfg: ReproConfig) -> str:
    return os.path.join(cfg.work, "sets", "cifar10-train")


def row_specs(cfg: ReproConfig) -> list[RowSpec]:
    """Every row of the table, in order."""
    b, name, batch = image_set(cfg), source_name(cfg), ("--batch-size", str(cfg.batch_size))
    specs = [RowSpec(RANDOM, "random", (), False),
             RowSpec(MONOGAN.replace("Image B", name), "monogan", ("train.monogan", "--shards", b, *batch), True),
             RowSpec(SUPERVISED, "supervised", ("train.supervised", "--dataset", "imagefolder", "--data", "{data}",
                                                "--arch", "small", *batch), False)]
    if cfg.rotnet:
        rot = ("--arch", "small", "--crop", "28", *batch)
        specs += [RowSpec(ROTNET_CIFAR, "rotnet", ("train.rotnet", "--shards", cifar_set(cfg), *rot), False),
                  RowSpec(ROTNET_B.replace("Image B", name), "rotnet", ("train.rotnet", "--shards", b, *rot), True)]
    for m in cfg.methods:
        label, argv = EXTRA_METHODS[m]
        specs.append(RowSpec(label.replace("Image B", name), m, (argv[0], "--shards", b, *argv[1:], *batch), True))
    return specs


def run_dir(cfg: ReproConfig, label: str, seed: int) -> str:
    return os.path.join(cfg.work, "runs", f"{slug(label)}-seed{seed}")


def probe_dir(cfg: ReproConfig, label: str, seed: int) -> str:
    return os.path.join(cfg.work, "probes", f"{slug(label)}-seed{seed}")


def render_step(cfg: ReproConfig, name: str, out: str, scale=True, rotation=True, jitter=True) -> Step:
    argv = ["augment", "render", "--image", cfg.image, "--preset", "cifar", "--quiet", "--count", str(cfg.count),
            "--seed", str(cfg.seed), "--workers", "2", "--out", out]
    argv += [] if scale else ["--no-scale"]
    argv += [] if rotation else ["--no-rotation"]
    argv += [] if jitter else ["--no-jitter"]
    return Step(name, tuple(argv), (out,))


def pack_step(cfg: ReproConfig, data: str) -> Step:
    """CIFAR-10 train packed unchanged (labels unused): the full-data set."""
    return Step("pack CIFAR-10 train", ("augment", "pack", os.path.join(data, "train"), "--out", cifar_set(cfg),
                                        "--seed", str(cfg.seed)), (cifar_set(cfg),))


def amp_args(cfg: ReproConfig) -> list[str]:
    """--amp for every command; none with "default" (each command's own)."""
    return [] if cfg.amp == "default" else ["--amp", cfg.amp]


def train_flags(cfg: ReproConfig, out: str, seed: int, steps: int, minutes: float, full: bool = False) -> list[str]:
    """Flags every trained row shares: ``steps`` optimisation steps over which its schedules run (the
    trainer's own --epochs stays, so its milestones keep their fraction of the run; ``full``: the whole
    --epochs schedule), and the wall-clock safety net."""
    length = [] if full else ["--max-steps", str(steps)]
    cap = ["--time-budget", f"{minutes * 60:g}"] if minutes and not full else []
    return (["--out", out, "--device", cfg.device, "--seed", str(seed), "--workers", str(cfg.workers), *length, *cap,
             *amp_args(cfg)] + (["--channels-last"] if cfg.channels_last else []))


def probe_step(cfg: ReproConfig, name: str, ckpt: str, out: str, data: str) -> Step:
    argv = ["probe.linear", "--checkpoint", ckpt, "--dataset", "imagefolder", "--data-root", data,
            "--out", out, "--epochs", str(cfg.probe_epochs), "--schedule", cfg.schedule,
            "--device", cfg.device, "--workers", str(cfg.workers), "--protocol", "cifar",
            "--jobs", str(cfg.probe_jobs), *amp_args(cfg),
            # the float16 CIFAR-10 cache is ~3 GB per checkpoint: kept only while that probe runs
            "--cache", os.path.join(cfg.work, "cache"), "--drop-cache"]
    return Step(name, tuple(argv), (out,))


def row_steps(cfg: ReproConfig, spec: RowSpec, seed: int, data: str) -> list[Step]:
    """One seed of one row: its training (or initialisation), then its probe."""
    out, label = run_dir(cfg, spec.label, seed), f"{spec.label}, seed {seed}"
    if spec.method == "random":
        train = Step(f"init {label}", ("train.random", "--arch", "small", "--seed", str(seed), "--out", out), (out,))
    else:
        argv = [data if a == "{data}" else a for a in spec.argv]
        full = cfg.full_schedules and spec.method in ("supervised", "rotnet")
        train = Step(f"train {label}", tuple(argv + train_flags(cfg, out, seed, cfg.steps_for(spec.method),
                                                                 cfg.train_minutes, full)), (out,))
    return [train, probe_step(cfg, f"probe {label}", os.path.join(out, "checkpoint.pt"),
                              probe_dir(cfg, spec.label, seed), data)]


def plan(cfg: ReproConfig, data: str) -> list[Step]:
    """The sets, then row by row every seed's training and probe (a stopped pipeline has whole rows)."""
    steps = [render_step(cfg, "render Image B", image_set(cfg))]
    if cfg.rotnet:
        steps.append(pack_step(cfg, data))
    for spec in row_specs(cfg):
        for seed in cfg.seed_list():
            steps += row_steps(cfg, spec, seed, data)
    return steps


def paper_values(cfg: ReproConfig, label: str) -> tuple[list[float | None] | None, str]:
    """The paper's Table 3 CIFAR-10 row for the same setting as ours, and that setting in words."""
    mono = MONOGAN.replace("Image B", source_name(cfg))
    key = PAPER_ROW.get(MONOGAN if label == mono and cfg.image.upper() == "B" else label)
    if key is None:
        return None, "none: the paper has no row for this setting"
    return TABLE3[key[0]].columns["cifar10"], key[1]


def rows(cfg: ReproConfig) -> list[Row]:
    """Every row with the seeds whose probes finished (rows with none are left out)."""
    out = []
    for spec in row_specs(cfg):
        done = [s for s in cfg.seed_list() if records.probe_facts(probe_dir(cfg, spec.label, s))]
        if not done:
            continue
        accs = [records.layer_accuracies(probe_dir(cfg, spec.label, s), LAYERS) for s in done]
        facts = tuple(None if spec.method == "random" else records.train_facts(run_dir(cfg, spec.label, s))
                      for s in done)
        paper, setting = paper_values(cfg, spec.label)
        out.append(Row(spec, per_layer(accs), tuple(done), facts, paper, setting))
    return out


def compare(a: Row, b: Row, layers: range) -> str:
    """Per layer: the difference of the means and its direction as the seeds allow (``conv1 +1.2 (above)``)."""
    parts = []
    for i in layers:
        x, y = a.layers[i], b.layers[i]
        if x is not None and y is not None:
            parts.append(f"{LAYERS[i]} {round(x.mean - y.mean, 1) + 0.0:+.1f} ({direction(x, y)})")
    return ", ".join(parts)


def paper_direction(pa: list[float | None], pb: list[float | None], i: int) -> str:
    return ABOVE if pa[i] > pb[i] else BELOW if pa[i] < pb[i] else "equal"


def readings(cfg: ReproConfig, rs: list[Row]) -> list[str]:
    """What the rows allow, computed from the numbers: each single-image row against Random (conv1..conv4,
    beside the paper's direction where it has the row), against supervised, the full-data RotNet against
    the single-image one, and the confounds no row here can exclude."""
    by = {r.label: r for r in rs}
    rand, sup = by.get(RANDOM), by.get(SUPERVISED)
    out = []
    for r in rs:
        if not r.spec.single_image:
            continue
        for other, key in ((rand, "random"), (sup, "supervised")):
            if other is None:
                continue
            line = f"- {r.label} vs {other.label}: {compare(r, other, range(len(LAYERS)))}"
            if r.paper is not None:
                theirs = TABLE3[key].columns["cifar10"]
                line += "; the paper's rows: " + ", ".join(f"{LAYERS[i]} {paper_direction(r.paper, theirs, i)}"
                                                          for i in range(len(LAYERS)))
            out.append(line + ".")
    rc, rb = by.get(ROTNET_CIFAR), by.get(ROTNET_B.replace("Image B", source_name(cfg)))
    if rc is not None and rb is not None:
        out.append(f"- {rb.label} vs the full-data {rc.label}: {compare(rb, rc, range(len(LAYERS)))}.")
    if not out:
        return ["- Not enough rows have finished for a reading."]
    budgets = sorted({f"{r.spec.method} {records.budget(f)}" for r in rs for f in r.facts if f})
    short = [f"{r.label} (seed {s})" for r in rs for s, f in zip(r.seeds, r.facts) if f and f.short]
    out.append(f"- *above* / *below*: every seed of one row lies above / below every seed of the other; otherwise "
               f"*{'within the seed spread'}*: no direction is claimed. Seeds per row: "
               + ", ".join(f"{r.label} {len(r.seeds)}" for r in rs) + ".")
    out.append("- Confounds these rows cannot exclude: the budgets differ by method (" + "; ".join(budgets)
               + "), so rows see different numbers of images and updates (a MonoGAN generator step follows "
               "--n-critic critic batches); the supervised row uses CIFAR-10's labels and trains far shorter than "
               "the paper's converged baseline; every row trains the same small encoder and is probed with the "
               "same linear heads, so trainable parameters are equal at probe time.")
    if short:
        out.append("- Stopped by the time cap before their steps (not comparable): " + ", ".join(short) + ".")
    return out


def table(rs: list[Row]) -> str:
    """Table 3's layout: ours (mean ± half-range over seeds) beside the paper's row for the same setting."""
    head = "| Row (trained on) | seeds | training here | " + " | ".join(f"{l} (ours) | {l} (paper)" for l in LAYERS)
    head += " | compared with the paper's row |\n|---|---:|---|" + "---:|---:|" * len(LAYERS) + "---|\n"
    lines = []
    for r in rs:
        paper = r.paper or [None] * len(LAYERS)
        cells = " | ".join(f"{report.cell(a)} | {report.fmt(p)}" for a, p in zip(r.layers, paper))
        reached = "none (random initialisation)" if r.spec.method == "random" else \
            " / ".join(sorted({records.reached(f) for f in r.facts}))
        lines.append(f"| {r.label} | {len(r.seeds)} | {reached} | {cells} | {r.setting} |")
    return head + "\n".join(lines) + "\n"


def plot(rs: list[Row], path: str) -> None:
    """Per row: the mean over seeds with the range as error bars (solid), the paper's row dotted."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for r in rs:
        xs = [i for i, s in enumerate(r.layers) if s is not None]
        ys = [r.layers[i].mean for i in xs]
        err = [[r.layers[i].mean - r.layers[i].lo for i in xs], [r.layers[i].hi - r.layers[i].mean for i in xs]]
        bars = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{r.label} (ours, {len(r.seeds)} seeds)")
        if r.paper is not None:
            ax.plot(range(len(LAYERS)), r.paper, linestyle=":", color=bars[0].get_color(), alpha=0.6)
    ax.set_xticks(range(len(LAYERS)), LAYERS)
    ax.set_ylabel("CIFAR-10 linear probe top-1 (%)")
    ax.set_title("Ours (mean, seed range) vs the paper's row for the same setting (dotted)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    report.save_figure(fig, path)


def write_page(cfg: ReproConfig, recs: dict[str, dict]) -> list[Row]:
    """Table 3's page and plot from every probe that has finished; returns the rows it shows."""
    rs = rows(cfg)
    png = os.path.splitext(cfg.out)[0] + ".png"
    runs = [(f"{s.label}, seed {seed}", run_dir(cfg, s.label, seed)) for s in row_specs(cfg) if s.method != "random"
            for seed in cfg.seed_list()]
    probes = {f"{s.label}, seed {seed}": records.probe_facts(probe_dir(cfg, s.label, seed))
              for s in row_specs(cfg) for seed in cfg.seed_list()}
    parts = report.header("Table 3 at reduced scale on the CPU", "`make repro-cpu` (`python -m repro table3`)",
                          cfg.seed_list())
    parts += ["## Table 3 (CIFAR-10 linear probes, small encoder)\n",
              table(rs) if rs else "_no probe has finished yet_\n",
              f"![Table 3]({os.path.basename(png)})\n" if rs else "",
              "## Reading\n", "\n".join(readings(cfg, rs)) + "\n",
              *report.footer(runs, probes, recs, cfg)]
    report.write_page(cfg.out, parts)
    if rs:
        plot(rs, png)
    return rs


def run(cfg: ReproConfig) -> list[Row]:
    """Run (or resume) Table 3's plan, refreshing the page after every probe; returns the rows."""
    return run_with_page(cfg.work, plan(cfg, cifar_root(cfg.cifar, cfg.work)), cfg.images,
                         lambda recs: write_page(cfg, recs))
