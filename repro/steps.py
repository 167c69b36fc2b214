"""The one runner: a plan is a list of ``Step``s, each a command of the project run as a subprocess.

A finished step leaves a done-marker (``WORK/done/<name>.json``: its argv, seconds, commit and the
machine's load); re-running a plan skips finished steps, so a stopped pipeline resumes. A marker whose
argv differs from the plan's is refused, option by option: a changed budget or option never silently
reuses an old result. Paths are recorded as given (relative to the project when run from its root).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import click

from augment.files import write_text_atomic
from augment.provenance import git_revision


@dataclass(frozen=True)
class Step:
    """One command of a plan: ``argv`` after ``python -m``; ``outputs`` are the files or folders it writes."""

    name: str
    argv: tuple[str, ...]
    outputs: tuple[str, ...] = field(default=())


def commit() -> str:
    """The short commit that runs; ``+dirty`` ignores docs/, which the pipelines rewrite as they go."""
    return git_revision(short=True, ignore=("docs",))


def done_path(work: str, name: str) -> str:
    return os.path.join(work, "done", name.replace(" ", "_").replace("/", "_") + ".json")


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


def finished(work: str, step: Step) -> dict | None:
    """The record of ``step`` if it finished earlier with the same argv; None if it has not run; a changed
    argv is one error that names each changed option and the ways out."""
    marker = done_path(work, step.name)
    if not os.path.isfile(marker):
        return None
    with open(marker) as f:
        rec = json.load(f)
    if rec["argv"] != list(step.argv):
        raise click.ClickException(
            f"step {step.name!r} was done in {work} with other arguments ({argv_change(rec['argv'], list(step.argv))}); "
            f"give the options it was run with, use a new --work folder, or delete {marker} and that step's "
            f"outputs to redo it")
    return rec


def run_step(work: str, step: Step, progress: str, images: str = "") -> dict:
    """Run one step unless it finished earlier; returns its record (argv, seconds, commit, load)."""
    rec = finished(work, step)
    if rec is not None:
        click.echo(f"{progress} {step.name}: done earlier ({rec['seconds']:.0f} s), skipped", err=True)
        return rec
    click.echo(f"{progress} {step.name}: {' '.join(step.argv)}", err=True)
    # the subprocess gets an absolute image folder; the records keep the paths as given
    env = os.environ | {"PYTHONUNBUFFERED": "1"} | ({"SOURCE_IMAGE_DIR": os.path.abspath(images)} if images else {})
    t0, load0 = time.time(), os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-m", *step.argv], env=env)
    if proc.returncode != 0:
        raise click.ClickException(f"step {step.name!r} failed (exit {proc.returncode}); fix the error above and "
                                   f"re-run: finished steps are skipped")
    # the load beside the time: budgets are in steps, so load changes the seconds, not the results
    rec = {"name": step.name, "argv": list(step.argv), "seconds": time.time() - t0, "commit": commit(),
           "load": [round(load0, 1), round(os.getloadavg()[0], 1)]}
    os.makedirs(os.path.dirname(done_path(work, step.name)), exist_ok=True)
    write_text_atomic(done_path(work, step.name), json.dumps(rec))
    return rec


def run_plan(work: str, steps: list[Step], images: str = "",
             after: Callable[[Step, dict[str, dict]], None] | None = None) -> dict[str, dict]:
    """Run (or resume) every step in order; ``after(step, records)`` follows each one (a page refresh)."""
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise click.ClickException(f"two steps of the plan share the name {dup!r}: give the rows distinct labels")
    records: dict[str, dict] = {}
    for i, s in enumerate(steps, 1):
        records[s.name] = run_step(work, s, f"[{i}/{len(steps)}]", images)
        if after is not None:
            after(s, records)
    return records


def run_with_page(work: str, steps: list[Step], images: str, write: Callable[[dict[str, dict]], Any],
                  refresh: tuple[str, ...] = ("probe",), first: dict[str, dict] | None = None) -> Any:
    """Run (or resume) a plan, rewriting its page after every step whose name starts with ``refresh`` (the page
    follows the results as they come); returns what the last ``write`` returns. ``first``: records of work
    done before the plan (written in process)."""
    def after(step: Step, recs: dict[str, dict]) -> None:
        if step.name.startswith(refresh):
            write((first or {}) | recs)

    return write((first or {}) | run_plan(work, steps, images, after))


def cifar_root(cifar: str, work: str) -> str:
    """An ImageFolder root with train/ and test/: the given folder, or the tarball extracted once into WORK."""
    if os.path.isdir(cifar):
        return cifar
    if not os.path.isfile(cifar):
        raise click.ClickException(f"{cifar}: CIFAR-10 not found; pass CIFAR=path/to/cifar10-jpg.tar.gz "
                                   f"(or an ImageFolder with train/ and test/)")
    dest = os.path.join(work, "data", "cifar10")
    if not os.path.isdir(os.path.join(dest, "test")):
        click.echo(f"extracting {cifar} -> {dest}", err=True)
        tmp = dest + ".partial"
        with tarfile.open(cifar) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, dest)
    return dest


def slug(label: str) -> str:
    """A row label as a folder name: ``MonoGAN (Image B), seed 1`` -> ``monogan-image-b-seed-1``."""
    out = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out
