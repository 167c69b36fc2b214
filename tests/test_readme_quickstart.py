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


def test_the_block_reads_only_what_an_earlier_line_wrote():
    """No placeholder: every folder a command reads was written by a line above it."""
    lines = quickstart()
    assert lines[0].startswith("python -m augment render") and lines[-1].startswith("python -m probe.table")
    reads = r"(?:--shards|--checkpoint|--data-root|augment verify|probe\.table) (\S+)"
    writes = r"(?:--out|-C|mkdir -p) (\S+)"
    for i, line in enumerate(lines):
        written = [w for earlier in lines[:i] for w in re.findall(writes, earlier)]
        for path in re.findall(reads, line):
            stem = path.removesuffix("*").rstrip("/")
            assert any(w == stem or w.startswith(stem + "/") for w in written), (line, path)


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
