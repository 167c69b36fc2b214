"""The CLI surface through CliRunner: render, verify, info, show, merge, and every bad input."""
import errno
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from augment.cli import cli


def textured(path, w=64, h=48):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def small(image, out, *extra):
    return run("render", "--image", image, "--count", 12, "--size", 16, "--samples-per-shard", 4, "--out", out,
               "--quiet", *extra)


@pytest.fixture
def rendered(tmp_path):
    src = textured(tmp_path / "src.png")
    out = tmp_path / "set"
    res = small(src, out)
    assert res.exit_code == 0, res.output
    return src, out


def test_render_info_show_verify(rendered, tmp_path):
    src, out = rendered
    info = run("info", out)
    assert info.exit_code == 0 and "sis1-" in info.output and "12 patches of 16x16 png" in info.output
    res = run("show", out, "--out", tmp_path / "grid.png", "--count", 6, "--cols", 3)
    assert res.exit_code == 0
    assert Image.open(tmp_path / "grid.png").size == (3 * 18 - 2, 2 * 18 - 2)
    res = run("verify", out, "--rerender", 5, "--sources", src)
    assert res.exit_code == 0 and "OK (3 shards, 12 samples, 5 re-rendered" in res.output


def test_verify_names_damaged_and_missing_shards(rendered):
    _, out = rendered
    with open(out / "shard-000001.tar", "r+b") as f:
        f.seek(600)
        f.write(b"\0\1")
    os.remove(out / "shard-000002.tar")
    res = run("verify", out)
    assert res.exit_code != 0
    assert "shard-000001.tar: damaged" in res.output and "shard-000002.tar: missing" in res.output
    assert "shard-000000.tar" not in res.output


def test_verify_rerender_catches_a_different_recipe(rendered):
    src, out = rendered
    import json

    path = out / "manifest.json"
    data = json.loads(path.read_text())
    data["config"]["hue"] = 0.3  # the shards no longer follow the recipe the manifest claims
    from augment.manifest import write_manifest

    write_manifest(out, data)
    res = run("verify", out, "--rerender", 3, "--sources", src)
    assert res.exit_code != 0 and "differs from a re-render" in res.output


def test_verify_names_an_edited_manifest(rendered):
    _, out = rendered
    path = out / "manifest.json"
    path.write_text(path.read_text().replace('"seed": 0', '"seed": 5'))
    res = run("verify", out)
    assert res.exit_code != 0 and "manifest.json" in res.output


def test_same_command_resumes_and_a_different_config_is_refused(rendered):
    src, out = rendered
    again = small(src, out)
    assert again.exit_code == 0 and "0 shards rendered, 3 kept" in again.output
    res = small(src, out, "--seed", 1)
    assert res.exit_code != 0 and "differs in: seed" in res.output


def test_shard_range_then_merge(tmp_path):
    src = textured(tmp_path / "src.png")
    out = tmp_path / "p"
    assert "merge" in small(src, out, "--shard-range", "0:1").output
    res = run("merge", out)
    assert res.exit_code != 0 and "2 of 3 shards have no piece" in res.output
    assert small(src, out, "--shard-range", "1:3").exit_code == 0
    res = run("merge", out)
    assert res.exit_code == 0 and (out / "manifest.json").exists()
    whole = tmp_path / "whole"
    small(src, whole)
    assert run("info", out).output.split()[1] == run("info", whole).output.split()[1]


def bad_cases(tmp_path):
    good = textured(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notimg.png").write_bytes(b"hello, not an image")
    png = open(good, "rb").read()
    (tmp_path / "trunc.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "two").mkdir()
    textured(tmp_path / "two" / "a.png")
    textured(tmp_path / "two" / "b.png")
    (tmp_path / "afile").write_text("x")
    return {
        "missing path": (["--image", tmp_path / "nope.png"], "no such file or folder"),
        "corrupt/truncated": (["--image", tmp_path / "trunc.png"], "corrupt or truncated"),
        "not an image": (["--image", tmp_path / "notimg.png"], "not an image"),
        "empty file": (["--image", tmp_path / "empty.png"], "empty file"),
        "empty folder": (["--image", tmp_path / "emptydir"], "holds no images"),
        "fewer than N": (["--image", tmp_path / "two", "--n", 3], "fewer than --n 3"),
        "N <= 0": (["--image", good, "--n", 0], "'--n': 0 is not in the range x>=1"),
        "D <= 0": (["--image", good, "--count", 0], "'--count': 0 is not in the range x>=1"),
        "S <= 0": (["--image", good, "--size", -4], "'--size': -4 is not in the range x>=1"),
        "unknown named": (["--image", "D"], "unknown named image"),
        "bomb": (["--image", good, "--max-pixels", 1000], "decompression-bomb"),
        "unwritable out": (["--image", good, "--out-under", tmp_path / "afile" / "sub"], "cannot create"),
    }


@pytest.mark.parametrize("case", ["missing path", "corrupt/truncated", "not an image", "empty file", "empty folder",
                                  "fewer than N", "N <= 0", "D <= 0", "S <= 0", "unknown named", "bomb",
                                  "unwritable out"])
def test_bad_input_is_one_clear_line_and_leaves_nothing(tmp_path, case):
    args, message = bad_cases(tmp_path)[case]
    out = tmp_path / "out"
    if "--out-under" in args:
        out = args.pop()
        args.pop()
    res = run("render", *args, "--count" if "--count" not in args else "--seed", 12 if "--count" not in args else 0,
              "--size" if "--size" not in args else "--quality", 16 if "--size" not in args else 95,
              "--out", out, "--quiet")
    assert res.exit_code != 0
    assert message in res.output and "Traceback" not in res.output
    lines = res.output.strip().splitlines()  # the parser's range errors come with click's usage hint
    assert sum(ln.startswith("Error:") for ln in lines) == 1 and (res.exit_code == 2 or len(lines) == 1)
    assert not os.path.exists(out)


def test_full_disk_leaves_no_tar_or_manifest(tmp_path, monkeypatch):
    import augment.render as r

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(r, "write_shard", full)
    out = tmp_path / "out"
    res = small(textured(tmp_path / "s.png"), out)
    assert res.exit_code != 0 and "no space left on the device" in res.output
    assert not out.exists()


def test_non_empty_foreign_folder_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = small(textured(tmp_path / "s.png"), out)
    assert res.exit_code != 0 and "not empty" in res.output
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_verify_on_a_folder_without_a_set(tmp_path):
    res = run("verify", tmp_path)
    assert res.exit_code != 0 and "not a shard set" in res.output
