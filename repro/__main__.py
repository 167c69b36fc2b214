"""``python -m repro table3|table1|table45|distill|all``: the paper's tables (and its successor's distillation)
at reduced scale, each a plan of steps.

Every subcommand resumes in its ``--work`` folder (a finished step is skipped, a changed option refused)
and rewrites its page under ``docs/results/`` as results arrive. Options come from the configs in
``repro.config``.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import click

from repro import distill, table1, table3, table45
from repro.config import DistillConfig, FinetuneConfig, ReproConfig, options


def _command(name: str, cls: type, fn: Callable[[Any], str], help: str) -> click.Command:
    def callback(**kw: Any) -> None:
        t0 = time.time()
        said = fn(cls(**kw))
        click.echo(f"{said} in {(time.time() - t0) / 60:.1f} min", err=True)

    return click.Command(name, params=options(cls), callback=callback, help=help,
                         context_settings={"help_option_names": ["-h", "--help"]})


def run_table3(cfg: ReproConfig) -> str:
    """Table 3; then Table 1 with ``--ablation`` and Tables 4 and 5 with ``--finetune``."""
    rows = table3.run(cfg)
    said = [f"wrote {cfg.out} ({len(rows)} rows)"]
    if cfg.ablation:
        said.append(run_table1(cfg))
    if cfg.finetune:
        m4, _ = table45.run(table45.from_repro(cfg, out=cfg.finetune_out), trained_by=cfg)
        said.append(f"wrote {cfg.finetune_out} ({sum(m.value is not None for m in m4)} Table 4 rows)")
    return "; ".join(said)


def run_table1(cfg: ReproConfig) -> str:
    cells = table1.run(cfg)
    return f"wrote {cfg.ablation_out} ({len(cells)} cells)"


def run_table45(cfg: FinetuneConfig) -> str:
    m4, m5 = table45.run(cfg)
    return (f"wrote {cfg.out} ({sum(m.value is not None for m in m4)} Table 4 rows, "
            f"{sum(m.value is not None for m in m5)} Table 5 rows)")


def run_distill(cfg: DistillConfig) -> str:
    rows = distill.run(cfg)
    return f"wrote {cfg.out} ({sum(r.top1 is not None for r in rows)} sources)"


def run_all(cfg: ReproConfig) -> str:
    from dataclasses import replace

    return run_table3(replace(cfg, ablation=True, finetune=True))


TABLE3 = _command("table3", ReproConfig, run_table3, "Table 3 at reduced scale: render, train every row with each "
                  "seed for its step budget, probe, write the page (--ablation, --finetune: the other tables too).")
TABLE1 = _command("table1", ReproConfig, run_table1, "Table 1 at reduced scale: the eight augmentation cells and a "
                  "seed pair, one method, equal step budgets.")
TABLE45 = _command("table45", FinetuneConfig, run_table45, "Tables 4 and 5 (and Figures 3 and 5) from Table 3's "
                   "checkpoints in the same work folder.")
DISTILL = _command("distill", DistillConfig, run_distill, "Single-image distillation (ICLR 2023) at reduced scale: "
                    "students distilled from Table 3's supervised teacher on CIFAR-10, Image B, Image A and a noise "
                    "image, equal step budgets, CIFAR-10 top-1 against steps.")
ALL = _command("all", ReproConfig, run_all, "Tables 3, 1, 4 and 5 and the figures, in one work folder.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The paper's tables at reduced scale, each a resumable plan of steps through the project's commands."""


for command in (TABLE3, TABLE1, TABLE45, DISTILL, ALL):
    cli.add_command(command)

if __name__ == "__main__":
    cli()
