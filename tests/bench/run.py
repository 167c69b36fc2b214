"""`make bench`: run every benchmark section and write docs/benchmarks.md.

Each section is a module here with ``run(quick: bool) -> str`` returning Markdown. Sections are run
one after another (never in parallel: they measure cores).
"""
from __future__ import annotations

import importlib
import os
import platform
import re
import time

import click

from augment.files import write_text_atomic
from augment.provenance import cpu_model, git_revision

STAND_IN = "STAND-IN INPUT"    # the mark of a section measured without its real input (render.py)
SECTIONS = ["render", "variants", "loader", "loop", "cluster", "probe", "gans", "precision"]


def machine() -> str:
    """The machine and the code: CPU, cores, Python and the commit."""
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, commit {git_revision(short=True)}"


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
    stand_in = [p.splitlines()[0] for p in parts[1:] if STAND_IN in p]
    if stand_in:
        # Figures from a stand-in must not replace the committed ones: show them, write nothing.
        click.echo(text)
        raise click.ClickException(f"{out} left as it is: {', '.join(stand_in)} measured a stand-in, not the "
                                   f"paper's images (see {STAND_IN} above); set SOURCE_IMAGE_DIR to the folder "
                                   f"holding them and run again")
    if only and os.path.isfile(out):
        with open(out) as f:
            text = splice(f.read(), parts[1:], parts[0])
    write_text_atomic(out, text)
    click.echo(f"wrote {out}", err=True)


def _sections(text: str) -> list[str]:
    """A report cut before each ``## `` heading (the first piece is the title block)."""
    return re.split(r"(?m)^(?=## )", text)


MARK = ": re-measured by `make bench ONLY=...` on "


def splice(old: str, new_sections: list[str], title: str) -> str:
    """``old`` with the sections of the same ``## `` heading replaced by the new ones (others appended);
    the title block notes which sections were re-measured and when."""
    pieces = _sections(old)
    heads = [p.splitlines()[0] if p.startswith("## ") else None for p in pieces]
    for sec in new_sections:
        for part in _sections(sec):
            if not part.startswith("## "):
                continue
            head = part.splitlines()[0]
            if head in heads:
                pieces[heads.index(head)] = part.rstrip() + "\n\n"
            else:
                pieces.append(part.rstrip() + "\n\n")
                heads.append(head)
    where = title.strip().splitlines()[-1].removeprefix("Measured by `make bench` on ").rstrip(".")
    names = [p.splitlines()[0][3:] for p in new_sections if p.startswith("## ")]
    # one line per section, so that an older line keeps the sections this run did not measure
    head = [ln for ln in pieces[0].rstrip().splitlines()
            if not ln.startswith("Sections re-measured") and not (ln.startswith("- ") and ln[2:].split(MARK)[0] in names)]
    head += [f"- {n}{MARK}{where}." for n in names]
    return "\n".join(head).rstrip() + "\n\n" + "".join(pieces[1:]).rstrip() + "\n"


if __name__ == "__main__":
    main()
