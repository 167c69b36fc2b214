"""Pages and plots from rows: side-by-side tables with seed spreads, the training and probe tables, and the
Time and Configuration sections every page ends with. Nothing here measures or decides: the table modules
hand over rows, and every fact printed was read from the runs' records (``repro.records``).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from typing import Any, Sequence

from augment.files import write_text_atomic
from augment.provenance import machine
from repro import records
from repro.stats import Spread
from repro.steps import commit

# Options worth naming beside each method's row (those its log records; the full config is in the log).
NOTABLE = {"rotnet": ("crop", "crop_mode", "fc_dropout", "variant"), "monogan": ("g_width", "n_critic", "variant"),
           "supervised": ("milestones", "lr"), "simclr": ("temperature", "proj_hidden", "recipe"),
           "dino": ("local_crops", "out_dim", "hidden", "bottleneck", "recipe"),
           "distill": ("temperature", "cutmix", "recipe", "optimizer", "lr")}


def fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def cell(s: Spread | None) -> str:
    """A measured cell: ``mean ± half-range`` over the seeds (– when nothing finished)."""
    return "–" if s is None else s.text()


def header(title: str, command: str, seeds: Sequence[int]) -> list[str]:
    """A page's title and its first paragraph: what wrote it, where, when, and with which seeds."""
    return [f"# {title}\n",
            f"Written by {command} at commit `{commit()}` on {machine()}, {time.strftime('%Y-%m-%d')}; the commit "
            f"that ran each step is in the Time table. Seeds: {', '.join(map(str, seeds))} ({len(seeds)} per trained "
            f"row); a cell is the mean ± half the range over them. Every fact about a run (data, budget, steps, "
            f"encoder, probe protocol) is read from that run's own records: its log, its shard set's manifest, "
            f"its probe.json.\n"]


def training_table(runs: list[tuple[str, str]], probes: dict[str, dict | None]) -> str:
    """What each (label, run folder) trained on and reached, all read from its log (and its probe's record
    of the encoder)."""
    lines = ["| run | command | trained on | encoder | batch | precision | budget | reached | training seconds | "
             "options |", "|---|---|---|---|---:|---|---|---|---:|---|"]
    for label, folder in runs:
        f = records.train_facts(folder)
        if f is None:
            continue
        spec = ((probes.get(label) or {}).get("checkpoint") or {}).get("encoder_spec") or {}
        opts = ", ".join(f"{k} {f.config[k]}" for k in NOTABLE.get(f.method, ()) if k in f.config)
        lines.append(f"| {label} | `train.{f.method}` | {records.trained_on(f)} | {spec.get('arch') or f.config.get('arch') or f.config.get('student_arch', '?')} | "
                     f"{f.config.get('batch_size', '?')} | {f.precision} | {records.budget(f)} | "
                     f"{records.reached(f)} | {f.seconds:.0f} | {opts or '–'} |")
    return "\n".join(lines) + "\n"


def probes_table(probes: dict[str, dict | None]) -> str:
    """The protocol each probe ran (from its probe.json); rows that ran the same protocol share a line."""
    groups: dict[tuple, list[str]] = {}
    for label, res in probes.items():
        if res:
            groups.setdefault(tuple(records.probe_protocol(res).items()), []).append(label)
    if not groups:
        return "_no probe has finished yet_\n"
    keys = [k for k, _ in next(iter(groups))]
    lines = ["| runs | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for proto, labels in groups.items():
        lines.append(f"| {', '.join(labels)} | " + " | ".join(v for _, v in proto) + " |")
    return "\n".join(lines) + "\n"


def time_table(recs: dict[str, dict]) -> str:
    """Each step's seconds, commit and the machine's load, and the total line."""
    total = sum(r["seconds"] for r in recs.values())
    return ("load: the machine's 1-minute load average when the step started and when it ended (budgets are in "
            "steps, so load changes these seconds, not the results).\n\n"
            "| step | seconds | commit | load |\n|---|---:|---|---|\n"
            + "".join(f"| {k} | {r['seconds']:.0f} | {r.get('commit', 'not recorded')} | "
                      f"{' → '.join(str(v) for v in r['load']) if 'load' in r else 'not recorded'} |\n"
                      for k, r in recs.items())
            + f"| **total** | **{total:.0f}** ({total / 60:.1f} min) | | |\n")


def footer(runs: list[tuple[str, str]], probes: dict[str, dict | None], recs: dict[str, dict], cfg: Any) -> list[str]:
    """The sections every Table 3 / Table 1 page ends with: what each run trained, the probes, Time, Configuration."""
    return ["## What each run trained\n", training_table(runs, probes), "## The probes\n", probes_table(probes),
            "## Time\n", time_table(recs), "## Configuration\n", configuration(cfg)]


def configuration(cfg: Any) -> str:
    return "```json\n" + json.dumps(asdict(cfg), indent=1, sort_keys=True) + "\n```\n"


def write_page(path: str, parts: list[str]) -> None:
    """The page, atomically (its folder made as needed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, "\n".join(p for p in parts if p))


def save_figure(fig, path: str) -> None:
    """Lay out, write and close a page's figure (every plot ends so)."""
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)


def pyplot():
    """matplotlib's pyplot on the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
