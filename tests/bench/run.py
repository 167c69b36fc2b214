"""`make bench`: run every benchmark section and write docs/benchmarks.md.

Each section is a module here with ``run(quick: bool) -> str`` returning Markdown. Sections are run
one after another (never in parallel: they measure cores).
"""
from __future__ import annotations

import importlib
import os
import platform
import subprocess
import time

import click

SECTIONS = ["render", "variants", "loader", "loop", "cluster", "probe", "gans", "precision"]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, commit {rev or 'unknown'}"


@click.command()
@click.option("--out", default="docs/benchmarks.md", show_default=True)
@click.option("--only", multiple=True, type=click.Choice(SECTIONS), help="Run only these sections.")
@click.option("--quick", is_flag=True, help="Tiny sizes: checks the benchmark code runs, numbers meaningless.")
def main(out: str, only: tuple[str, ...], quick: bool) -> None:
    """Run the benchmarks and write their Markdown report."""
    parts = [f"# Benchmarks\n\nMeasured by `make bench` on {machine()}, {time.strftime('%Y-%m-%d')}.\n"]
    import torch

    threads = torch.get_num_threads()
    for name in only or SECTIONS:
        mod = importlib.import_module(f"tests.bench.{name}")
        click.echo(f"== {name}", err=True)
        parts.append(mod.run(quick=quick))
        # a section may pin threads (the loader's workers use one each); the next starts from the default
        torch.set_num_threads(threads)
    text = "\n".join(parts)
    if quick:
        click.echo(text)
        return
    with open(out, "w") as f:
        f.write(text)
    click.echo(f"wrote {out}", err=True)


if __name__ == "__main__":
    main()
