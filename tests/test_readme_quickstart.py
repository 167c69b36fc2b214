"""The README's "Try it on a CPU in minutes" block runs as written, command by command, in order."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstart() -> list[str]:
    """The command lines of the README's quick-start block, in order."""
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"## Try it on a CPU in minutes\n.*?```sh\n(.*?)```", text, re.S)
    assert block, "the README lost its quick-start block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


# What a command line reads, and what it writes (a folder, or a file whose folder then holds it).
READS = (r"(?:--shards|--checkpoint|--compare|--teacher|--data|--data-root|--eval-data|--content|--style|"
         r"augment (?:verify|info|show|publish|merge)|probe\.table|probe\.figures (?:filters|layers)) (\S+)")
WRITES = r"(?:--out|-C|mkdir -p|augment fetch \S+) (\S+)"
# The README's own placeholders for the reader's data, each explained in its prose.
PLACEHOLDERS = {"DATA", "imagenet", "a.jpg", "b.jpg", "IMAGEFOLDER", "path/to/imagefolder", "DIR"}


def unread(lines: list[str], placeholders: set[str] = frozenset()) -> list[tuple[str, str]]:
    """(line, path) for every path a line reads that no line above it wrote."""
    missing = []
    for i, line in enumerate(lines):
        written = [w for earlier in lines[:i] for w in re.findall(WRITES, earlier.split(" #")[0])]
        for path in re.findall(READS, line.split(" #")[0]):
            stem = path.removesuffix("*").rstrip("/")
            stem = os.path.dirname(stem) if stem.endswith(".pt") else stem
            if stem not in placeholders and not any(w == stem or w.startswith(stem + "/") or
                                                    stem.startswith(w + "/") for w in written):
                missing.append((line, path))
    return missing


def test_the_block_reads_only_what_an_earlier_line_wrote():
    """No placeholder: every folder a command reads was written by a line above it."""
    lines = quickstart()
    assert lines[0].startswith("python -m augment render") and lines[-1].startswith("python -m probe.table")
    assert unread(lines) == []


def test_every_readme_command_reads_what_an_earlier_one_wrote_or_a_named_placeholder():
    """The full-size commands, read in the README's order (quick start first): each input is an earlier
    command's output, or one of the few placeholders for the reader's own data that the prose explains."""
    text = open(os.path.join(ROOT, "README.md")).read()
    lines = [ln for block in re.findall(r"```sh\n(.*?)```", text, re.S) for ln in block.splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert any("train.bigan" in ln for ln in lines) and any("probe.style" in ln for ln in lines)
    assert unread(lines, PLACEHOLDERS) == []
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    assert [p for p in PLACEHOLDERS - {"path/to/imagefolder", "DIR"} if f"`{p}`" not in prose] == []
    # the checker itself: an input nobody wrote is caught
    assert unread(["python -m train.rotnet --shards shards/nowhere --out runs/x"]) == \
        [("python -m train.rotnet --shards shards/nowhere --out runs/x", "shards/nowhere")]


@pytest.mark.slow
def test_every_quickstart_command_runs_as_written_in_order(tmp_path):
    shared = os.path.join(ROOT, "..", "shared", "data")
    if not os.path.isfile(os.path.join(shared, "cifar10-jpg.tar.gz")):
        pytest.skip(f"the shared data is not at {shared}: the quick start reads ../shared/data")
    project = tmp_path / "project"          # a stand-in root: ../shared resolves as beside the real one
    project.mkdir()
    os.symlink(os.path.realpath(os.path.join(ROOT, "..", "shared")), tmp_path / "shared")
    env = os.environ | {"PYTHONPATH": ROOT, "SOURCE_IMAGE_DIR": "../shared/data/images",
                        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    for line in quickstart():
        r = subprocess.run(["bash", "-c", line], cwd=project, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{line}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr, line
    assert "conv1" in r.stdout and "rotnet-B" in r.stdout and "random" in r.stdout
