"""Table 1 at reduced scale (``python -m repro table1``, ``make repro-ablation-cpu``): the augmentation ablation.

Seven Image B sets are rendered with augmentations left out (cell (j), all on, is Table 3's set: the same
config, the same bytes); one method (MonoGAN, the paper's; ``--ablation-method rotnet`` where MonoGAN
cannot learn within the CPU budget) trains on each cell for the same step budget, and cell (j) trains
with a second seed, the yardstick for noise. Every run is probed on CIFAR-10 as Table 3's rows are. Rows
(a) Fully sup. and (b) Random feat. are Table 3's, read from the same work folder when it has them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from probe.paper import LAYERS as PAPER_LAYERS, TABLE1
from repro import records, report, table3
from repro.config import ReproConfig
from repro.stats import Spread, spread
from repro.steps import Step, cifar_root, run_with_page

LAYERS = PAPER_LAYERS["table1"]
AUGMENTATIONS = ("scale", "rotation", "jitter")
# Table 1 cell (its letter in probe.paper.TABLE1) -> which augmentations are on (scale, rotation, jitter).
CELLS = {"c": (False, False, False), "d": (False, False, True), "e": (False, True, False), "f": (True, False, False),
         "g": (False, True, True), "h": (True, True, False), "i": (True, False, True), "j": (True, True, True)}
METHOD_NAMES = {"monogan": "MonoGAN", "rotnet": "RotNet"}


@dataclass(frozen=True)
class Cell:
    """A measured cell: per layer the spread over its seeds (cell (j) has two)."""

    key: str
    label: str
    layers: list[Spread | None]
    seeds: tuple[int, ...]
    facts: tuple[records.TrainFacts | None, ...]
    paper: list[float | None]


def cell_label(key: str) -> str:
    return f"({key}) {TABLE1[key].label}"


def cell_seeds(cfg: ReproConfig, key: str) -> list[int]:
    """Every cell trains with the first seed; cell (j) also with the next, the noise yardstick."""
    return [cfg.seed, cfg.seed + 1] if key == "j" else [cfg.seed]


def set_dir(cfg: ReproConfig, key: str) -> str:
    return table3.image_set(cfg) if key == "j" else os.path.join(cfg.work, "sets", f"ablation-{key}")


def run_dir(cfg: ReproConfig, key: str, seed: int) -> str:
    return os.path.join(cfg.work, "runs", f"ablation-{cfg.ablation_method}-{key}-seed{seed}")


def probe_dir(cfg: ReproConfig, key: str, seed: int) -> str:
    return os.path.join(cfg.work, "probes", f"ablation-{cfg.ablation_method}-{key}-seed{seed}")


def train_argv(cfg: ReproConfig, key: str) -> list[str]:
    batch = ["--batch-size", str(cfg.batch_size)]
    if cfg.ablation_method == "rotnet":
        return ["train.rotnet", "--shards", set_dir(cfg, key), "--arch", "small", "--crop", "28", *batch]
    return ["train.monogan", "--shards", set_dir(cfg, key), *batch]


def plan(cfg: ReproConfig, data: str) -> list[Step]:
    """Render the seven sets Table 3 does not (cell (j) is its set), then train and probe every cell."""
    steps = [table3.render_step(cfg, "render Image B", table3.image_set(cfg))]
    steps += [table3.render_step(cfg, f"render {cell_label(k)}", set_dir(cfg, k), *flags)
              for k, flags in CELLS.items() if k != "j"]
    budget = cfg.ablation_budget()
    name = METHOD_NAMES[cfg.ablation_method]
    for key in CELLS:
        for seed in cell_seeds(cfg, key):
            out, label = run_dir(cfg, key, seed), f"{name} {cell_label(key)}, seed {seed}"
            steps.append(Step(f"train {label}", tuple(train_argv(cfg, key) + table3.train_flags(
                cfg, out, seed, budget, cfg.ablation_minutes)), (out,)))
            steps.append(table3.probe_step(cfg, f"probe {label}", os.path.join(out, "checkpoint.pt"),
                                           probe_dir(cfg, key, seed), data))
    return steps


def cells(cfg: ReproConfig) -> list[Cell]:
    """Every cell whose probes finished, plus (a) and (b) from Table 3's rows where this work folder has them."""
    out = []
    for key, row in (("a", table3.SUPERVISED), ("b", table3.RANDOM)):
        done = [s for s in cfg.seed_list() if records.probe_facts(table3.probe_dir(cfg, row, s))]
        if done:
            accs = [records.layer_accuracies(table3.probe_dir(cfg, row, s), LAYERS) for s in done]
            out.append(Cell(key, cell_label(key), _per_layer(accs), tuple(done), (), TABLE1[key].columns["cifar10"]))
    for key in CELLS:
        done = [s for s in cell_seeds(cfg, key) if records.probe_facts(probe_dir(cfg, key, s))]
        if done:
            accs = [records.layer_accuracies(probe_dir(cfg, key, s), LAYERS) for s in done]
            facts = tuple(records.train_facts(run_dir(cfg, key, s)) for s in done)
            out.append(Cell(key, cell_label(key), _per_layer(accs), tuple(done), facts, TABLE1[key].columns["cifar10"]))
    return out


def _per_layer(accs: list[list[float | None]]) -> list[Spread | None]:
    return [spread(a[i] for a in accs) for i in range(len(LAYERS))]


def seed_gap(cs: list[Cell]) -> list[float | None] | None:
    """Per layer, how far cell (j)'s two seeds land apart (None until both finished)."""
    j = next((c for c in cs if c.key == "j"), None)
    if j is None or len(j.seeds) < 2:
        return None
    return [None if s is None else s.hi - s.lo for s in j.layers]


def main_effects(values: dict[str, list[float | None]]) -> dict[str, list[float]] | None:
    """Per augmentation and layer: the mean of the four cells with it minus the four without it."""
    if not all(values.get(k) and None not in values[k] for k in CELLS):
        return None
    effects = {}
    for a, name in enumerate(AUGMENTATIONS):
        on = [values[k] for k, flags in CELLS.items() if flags[a]]
        off = [values[k] for k, flags in CELLS.items() if not flags[a]]
        effects[name] = [sum(r[i] for r in on) / 4 - sum(r[i] for r in off) / 4 for i in range(len(LAYERS))]
    return effects


def effect_reading(effect: float, gap: float | None) -> str:
    """``+3.1 (up)``: a main effect and whether it exceeds one cell's seed gap (the conservative yardstick)."""
    if gap is None:
        return f"{round(effect, 1) + 0.0:+.1f} (no seed pair: no direction claimed)"
    return f"{round(effect, 1) + 0.0:+.1f} ({'up' if effect > gap else 'down' if effect < -gap else 'within the seed spread'})"


def readings(cfg: ReproConfig, cs: list[Cell]) -> tuple[list[str], dict[str, list[float]] | None]:
    """Table 1's claims checked against the cells, from the numbers; and the main effects (rows of data)."""
    means = {c.key: [None if s is None else s.mean for s in c.layers] for c in cs}
    firsts = {c.key: [None if s is None else s.values[0] for s in c.layers] for c in cs}
    gap = seed_gap(cs)
    effects = main_effects(firsts)
    if effects is None:
        return ["- Not every cell has finished: no reading yet."], None
    out = []
    if gap is not None:
        out.append(f"- Seed yardstick: cell (j)'s two seeds land {' / '.join(report.fmt(g) for g in gap)} points "
                   f"apart (conv1…conv4). A main effect is a difference of two four-cell means; it is called up or "
                   f"down only when it exceeds that gap of one cell, otherwise *within the seed spread*.")
    paper = main_effects({k: TABLE1[k].columns["cifar10"] for k in CELLS})
    for a in AUGMENTATIONS:
        out.append(f"- Main effect of {a} (cells with it minus cells without, seed {cfg.seed}): "
                   + ", ".join(f"{LAYERS[i]} {effect_reading(effects[a][i], gap[i] if gap else None)}"
                               for i in range(len(LAYERS)))
                   + "; paper " + " / ".join(f"{v:+.1f}" for v in paper[a]) + ".")
    early = {a: (v[0] + v[1]) / 2 for a, v in effects.items()}
    top = max(early, key=early.get)
    clear = gap is not None and all(early[top] - early[b] > max(gap[0], gap[1]) for b in early if b != top)
    out.append(f"- The paper finds scale the most important augmentation. Here the largest conv1/conv2 effect is "
               f"{top} ({early[top]:+.1f})" + ("; it exceeds the others by more than the seed gap." if clear else
                                               "; its lead over the next is within the seed spread."))
    if "b" in means and "c" in means:
        d = [means["c"][i] - means["b"][i] for i in range(2)]
        out.append(f"- No augmentation vs random features, conv1/conv2: {d[0]:+.1f} / {d[1]:+.1f} (paper "
                   f"{TABLE1['c'].columns['cifar10'][0] - TABLE1['b'].columns['cifar10'][0]:+.1f} / "
                   f"{TABLE1['c'].columns['cifar10'][1] - TABLE1['b'].columns['cifar10'][1]:+.1f}); (b) is Table 3's "
                   f"Random row over its seeds.")
    out.append("- Confounds: every cell trains the same method, network and step budget on sets of the same size, so "
               "the cells differ only in their augmentations; cells (c)-(i) ran one seed each, so a cell-to-cell "
               "difference below the seed gap says nothing.")
    return out, effects


def table(cs: list[Cell]) -> str:
    head = "| cell | seeds | " + " | ".join(f"{l} (ours) | {l} (paper)" for l in LAYERS) + " |\n"
    head += "|---|---:|" + "---:|---:|" * len(LAYERS) + "\n"
    return head + "\n".join(f"| {c.label} | {len(c.seeds)} | " + " | ".join(
        f"{report.cell(a)} | {report.fmt(p)}" for a, p in zip(c.layers, c.paper)) + " |" for c in cs) + "\n"


def effects_table(effects: dict[str, list[float]], gap: list[float | None] | None) -> str:
    paper = main_effects({k: TABLE1[k].columns["cifar10"] for k in CELLS})
    lines = ["| augmentation | " + " | ".join(f"{l} (ours) | {l} (paper)" for l in LAYERS) + " |",
             "|---|" + "---:|---:|" * len(LAYERS)]
    for a, vals in effects.items():
        lines.append(f"| {a} | " + " | ".join(f"{effect_reading(v, gap[i] if gap else None)} | {paper[a][i]:+.1f}"
                                             for i, v in enumerate(vals)) + " |")
    return "\n".join(lines) + "\n"


def plot(cs: list[Cell], path: str) -> None:
    """Grouped bars per cell (conv1…conv4, our mean with the seed range), the paper's values as black ticks."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(10, 4), dpi=120)
    width = 0.2
    for i, layer in enumerate(LAYERS):
        xs = [c + (i - 1.5) * width for c in range(len(cs))]
        ys = [cl.layers[i].mean if cl.layers[i] else 0 for cl in cs]
        err = [[cl.layers[i].mean - cl.layers[i].lo if cl.layers[i] else 0 for cl in cs],
               [cl.layers[i].hi - cl.layers[i].mean if cl.layers[i] else 0 for cl in cs]]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=f"{layer} (ours)")
        ax.scatter(xs, [cl.paper[i] for cl in cs], marker="_", s=120, color="black",
                   label="paper" if i == 0 else None, zorder=3)
    ax.set_xticks(range(len(cs)), [c.label.replace(" ", "\n", 1) for c in cs], fontsize=7)
    ax.set_ylim(30, 80)
    ax.set_ylabel("CIFAR-10 linear probe top-1 (%)")
    ax.set_title("Table 1 augmentation ablation: ours (bars, seed range) vs paper (black ticks)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=5)
    report.save_figure(fig, path)


def write_page(cfg: ReproConfig, recs: dict[str, dict]) -> list[Cell]:
    """Table 1's page and ablation.png from every cell that has finished; returns the cells."""
    cs = cells(cfg)
    png = os.path.join(os.path.dirname(cfg.ablation_out), "ablation.png")
    name = METHOD_NAMES[cfg.ablation_method]
    why = ("the paper's method" if cfg.ablation_method == "monogan" else
           "chosen with --ablation-method rotnet: the paper's method is MonoGAN; RotNet learns within a CPU budget "
           "of minutes where MonoGAN's few hundred generator steps may not")
    lines, effects = readings(cfg, cs)
    key_runs = [(f"{cell_label(k)}, seed {s}", run_dir(cfg, k, s)) for k in CELLS for s in cell_seeds(cfg, k)]
    probes = {f"{cell_label(k)}, seed {s}": records.probe_facts(probe_dir(cfg, k, s)) for k in CELLS
              for s in cell_seeds(cfg, k)}
    parts = report.header("Table 1 at reduced scale on the CPU", "`make repro-ablation-cpu` (`python -m repro table1`)",
                          [cfg.seed, cfg.seed + 1])
    parts += [f"Method on every cell: **{name}** ({why}), {cfg.ablation_budget():,} "
              f"steps per cell. Cells (c)-(i) train seed {cfg.seed}; cell (j) seeds {cfg.seed} and {cfg.seed + 1}; "
              f"(a) and (b) are Table 3's rows from the same work folder (every seed it ran).\n",
              "## Table 1 (CIFAR-10 linear probes)\n", table(cs) if cs else "_no cell has finished yet_\n",
              f"![Table 1]({os.path.basename(png)})\n" if cs else "",
              "## Main effect of each augmentation\n",
              effects_table(effects, seed_gap(cs)) if effects else "_not every cell has finished_\n",
              "## Reading\n", "\n".join(lines) + "\n",
              *report.footer(key_runs, probes, recs, cfg)]
    report.write_page(cfg.ablation_out, parts)
    if cs:
        plot(cs, png)
    return cs


def run(cfg: ReproConfig) -> list[Cell]:
    """Run (or resume) Table 1's plan, refreshing the page after every probe; returns the cells."""
    return run_with_page(cfg.work, plan(cfg, cifar_root(cfg.cifar, cfg.work)), cfg.images,
                         lambda recs: write_page(cfg, recs))
