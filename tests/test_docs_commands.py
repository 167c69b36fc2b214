"""Every command and option the docs and the README name exists.

Reads every fenced code block and inline code span of README.md and docs/*.md. A ``python -m X ...`` (or
``torchrun ... -m X ...``) of the project's own packages must name a command that exists (with its
subcommand, for the groups ``augment``, ``probe.figures`` and ``repro``), and each ``--option`` on that line must be
one of that command's options. Any other ``--option`` in code must be an option of some project command,
unless it is one of the few names below that belong to other programs or stand for prose.
"""
from __future__ import annotations

import glob
import importlib
import os
import re

import click
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("augment", "train", "probe", "repro")
# Options that docs name but that are no project command's: other programs' flags (the released code
# bases, torchrun, pytest, pip) quoted as what they are.
OTHER_PROGRAMS = {
    "--initcrop", "--cropfirst", "--deg", "--shear", "--scale", "--vflip",  # the released generator
    "--crop_resize", "--crop_size", "--raw_size", "--cat_inputs", "--decay_epochs", "--feat_net_size",
    "--gen_net_size", "--no_decay_gain",  # the released BiGAN scripts
    "--color_jitter_strength", "--use_blur",  # google-research/simclr
    "--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port", "--rdzv_endpoint",
    "--rdzv_backend", "--standalone",  # torchrun
    "--target", "--no-deps", "--no-cache-dir", "--durations",  # pip, pytest
}
# Prose placeholders: the option a config field ``x`` generates.
PLACEHOLDERS = {"--x", "--no-x"}
COMMAND = re.compile(r"(?:^|\s)-m\s+((?:%s)(?:\.\w+)*)(.*)" % "|".join(PACKAGES))
OPTION = re.compile(r"(?<![\w-])--[a-zA-Z][\w-]*")


def doc_files() -> list[str]:
    return [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def code_snippets(text: str) -> list[str]:
    """Lines of fenced blocks (continuations joined) and inline code spans, in order."""
    out, fenced = [], re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
    for block in fenced.findall(text):
        out += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    rest = fenced.sub("", text)
    return out + [a or b for a, b in re.findall(r"``(.+?)``|`([^`\n]+)`", rest)]


def commands_in(snippet: str) -> list[tuple[str, list[str]]]:
    """(module, tokens after it) of every project command in one snippet; comments and the next chained
    command end a command."""
    snippet = snippet.split(" #")[0]
    found = []
    for part in re.split(r"&&|\|\||;|\|", snippet):
        m = COMMAND.search(part)
        while m and m.group(1) == "train.launch":   # torchrun's arguments, then the trainer's own command
            m = COMMAND.search(m.group(2))
        if m:
            found.append((m.group(1), m.group(2).split()))
    return found


def resolve(module: str) -> click.Command | None:
    """The click command ``python -m module`` runs (None for modules that are no command)."""
    mod = importlib.import_module(f"{module}.__main__" if module in PACKAGES else module)
    for name in ("cli", "main"):
        obj = getattr(mod, name, None)
        if isinstance(obj, click.Command):
            return obj
    return None


def option_names(cmd: click.Command) -> set[str]:
    names = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
    return names | {"--help"}


def all_options() -> set[str]:
    """Every option of every project command and subcommand."""
    names = set()
    for path in glob.glob(os.path.join(ROOT, "*", "*.py")) + glob.glob(os.path.join(ROOT, "tests", "bench", "*.py")):
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        if not rel.startswith((*PACKAGES, "tests.bench")) or rel.endswith("__init__"):
            continue
        mod = importlib.import_module(rel)
        for obj in vars(mod).values():
            if isinstance(obj, click.Command):
                names |= option_names(obj)
                for sub in getattr(obj, "commands", {}).values():
                    names |= option_names(sub)
    return names


def check_command(module: str, tokens: list[str]) -> list[str]:
    """Problems with one documented command line: an unknown module, subcommand or option."""
    try:
        cmd = resolve(module)
    except ImportError as e:
        return [f"python -m {module}: no such module ({e})"]
    if cmd is None:
        return []
    where = f"python -m {module}"
    if isinstance(cmd, click.Group):
        sub = next((t for t in tokens if not t.startswith("-")), None)
        if sub is None or sub.strip("[]<>.") not in cmd.commands:
            return [] if sub is None or not sub.isidentifier() else [f"{where} {sub}: no such subcommand"]
        cmd, where = cmd.commands[sub], f"{where} {sub}"
    known = option_names(cmd)
    return [f"{where}: no option {opt}" for t in tokens for opt in OPTION.findall(t) if opt not in known]


def documented() -> list[tuple[str, str]]:
    return [(os.path.relpath(path, ROOT), snippet) for path in doc_files()
            for snippet in code_snippets(open(path, encoding="utf-8").read())]


def test_every_documented_command_line_names_real_options():
    lines = [(doc, snippet, module, tokens) for doc, snippet in documented() for module, tokens in commands_in(snippet)]
    assert len(lines) > 50  # the parser sees the docs' commands (a broken parser would pass vacuously)
    problems = [f"{doc}: {p}  [{snippet.strip()[:90]}]" for doc, snippet, module, tokens in lines
                for p in check_command(module, tokens)]
    assert not problems, "\n".join(problems)


def test_every_option_named_in_code_exists_somewhere():
    known = all_options() | OTHER_PROGRAMS | PLACEHOLDERS
    problems = sorted({f"{doc}: {opt}" for doc, snippet in documented() for opt in OPTION.findall(snippet)
                       if opt not in known and opt.split("=")[0] not in known})
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("snippet,expected", [
    ("python -m train.rotnet --shards S --crop-mode resized", []),
    ("python -m train.rotnet --shards S --no-such-option 3", ["python -m train.rotnet: no option --no-such-option"]),
    ("python -m augment render --image B --out x && python -m augment verify x --bogus",
     ["python -m augment verify: no option --bogus"]),
    ("python -m augment frobnicate x", ["python -m augment frobnicate: no such subcommand"]),
    ("torchrun --nproc_per_node 4 -m train.dino --shards S --local-crops 2", []),
    ("python -m train.launch --nproc_per_node 4 -m train.dino --shards S --bogus 2",
     ["python -m train.dino: no option --bogus"]),
    ("python -m train.deepcluster --no-feature-relu  # alias", []),
])
def test_the_checker_finds_what_it_should(snippet, expected):
    assert [p for module, tokens in commands_in(snippet) for p in check_command(module, tokens)] == expected
