"""Fault injection for `augment`: concurrent writers, hostile manifests, damaged sets, full disks,
unwritable outputs, out-of-range options and many sources. Every fault must end in one line naming
the input and the fix, a non-zero exit, no traceback, and no loss of what was already written.

docs/reliability.md counts the cases of this module (faults tried and handled)."""
from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import augment.files as files
from augment import share
from augment.__main__ import cli
from augment.lock import Busy, folder_lock, read_holder
from augment.manifest import MANIFEST, read_manifest, write_manifest
from augment.render import Recipe, RenderConfig, render
from augment.shards import sample_key, write_shard
from augment.sources import SourceCache, load_all
from tests.faults import LimitedFile
from tests.toyset import make_toy_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(res, code: int = 1) -> str:
    """The single line of a clean failure (asserts there is exactly one and no traceback)."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, (AssertionError, TypeError))
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    return lines[0]


def last_error(res) -> str:
    """The error line of a failure that printed something useful first (info's summary, click's usage)."""
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, res.output
    return errors[0]


def textured(path, w=64, h=48, seed=1):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): what must survive a refused command."""
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


def temps(folder) -> list[str]:
    return [n for _, _, names in os.walk(folder) for n in names if ".partial" in n]


HOLD = ("import sys, time\nfrom augment.lock import folder_lock\n"
        "with folder_lock(sys.argv[1], sys.argv[2]):\n"
        "    print('held', flush=True)\n"
        "    if sys.argv[3] == 'die':\n"
        "        import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"
        "    time.sleep(60)\n")


def hold_lock(folder, what="a test holder", die=False) -> subprocess.Popen:
    """A separate process holding ``folder``'s lock (or taking it and dying by SIGKILL)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), what, "die" if die else "live"], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    if die:
        p.wait(10)
    return p


# --------------------------------------------------------------------------- concurrency


def small_render(image, out, *extra):
    return run("render", "--image", image, "--count", 12, "--size", 16, "--samples-per-shard", 4, "--out", out,
               "--quiet", *extra)


def test_render_into_a_locked_folder_names_the_holder_and_touches_nothing(tmp_path):
    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    assert small_render(src, out, "--shard-range", "0:1").exit_code == 0
    before = snapshot(out)
    holder = hold_lock(out / ".render", "render into set")
    try:
        line = one_line_error(small_render(src, out))
        assert f"process {holder.pid}" in line and "is in use" in line and "render into set" in line
        assert snapshot(out) == {**before, ".render/lock": snapshot(out)[".render/lock"]}
        line = one_line_error(run("merge", out))
        assert f"process {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    assert small_render(src, out).exit_code == 0 and (out / MANIFEST).exists()


def test_two_renders_at_once_never_destroy_each_other(tmp_path):
    src = textured(tmp_path / "s.png", 400, 300)
    out = tmp_path / "set"
    cmd = [sys.executable, "-m", "augment", "render", "--image", src, "--count", "1600", "--size", "48",
           "--samples-per-shard", "40", "--quiet", "--out", str(out)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(120), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0, results  # one of them completed the set
    for rc, err in results:
        assert rc == 0 or ("is in use by process" in err and "Traceback" not in err), err
    ref = tmp_path / "ref"
    render(RenderConfig(src, str(ref), Recipe(count=1600, size=48, image_format="png", samples_per_shard=40),
                        progress=False))
    assert read_manifest(out).id == read_manifest(ref).id
    assert run("verify", out).exit_code == 0 and not temps(out) and not (out / ".render" / "lock").exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    folder = tmp_path / "job"
    dead = hold_lock(folder, die=True)
    assert read_holder(str(folder / "lock")).pid == dead.pid  # its lock file is still there
    with folder_lock(str(folder), "the next run") as lock:
        assert lock.previous.pid == dead.pid and read_holder(lock.path).pid == os.getpid()
    assert not (folder / "lock").exists()


def test_a_held_lock_refuses_in_this_process_too_and_is_released(tmp_path):
    with folder_lock(str(tmp_path), "first"):
        with pytest.raises(Busy, match=f"process {os.getpid()} on .*first"):
            with folder_lock(str(tmp_path), "second"):
                pass
    with folder_lock(str(tmp_path), "third") as lock:
        assert lock.previous is None


@pytest.mark.parametrize("alive", [True, False])
def test_lock_without_flock_decides_by_the_recorded_process(tmp_path, monkeypatch, alive):
    import augment.lock as lk

    holder = hold_lock(tmp_path, die=not alive)

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lk.fcntl, "flock", no_flock)
    try:
        if alive:
            with pytest.raises(Busy, match=f"process {holder.pid}"):
                with folder_lock(str(tmp_path), "fallback"):
                    pass
        else:
            with folder_lock(str(tmp_path), "fallback") as lock:
                assert lock.previous.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_stale_temporary_files_are_removed_at_the_next_start(tmp_path):
    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    assert small_render(src, out, "--shard-range", "0:1").exit_code == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [out / f"shard-000001.tar.partial-{dead}", out / ".render" / f"shard-000001.json.partial-{dead}",
             out / "shard-000002.tar.partial"]  # the last: an older version's name
    # A live PID too: under the set's lock no other render can be writing here (a killed worker is a
    # zombie, "alive" to kill(pid, 0), and PIDs are reused), so the flock, not the PID, decides.
    live = out / f"shard-000003.tar.partial-{os.getppid()}"
    for p in [*stale, live]:
        p.write_bytes(b"half a shard")
    assert small_render(src, out).exit_code == 0
    assert not any(p.exists() for p in [*stale, live])
    assert not [n for n in os.listdir(out) if ".partial" in n]


def test_fetch_into_a_locked_folder_is_refused(tmp_path):
    src = make_toy_set(str(tmp_path / "src"), count=16, size=16, per_shard=8)
    out = tmp_path / "copy"
    holder = hold_lock(out / ".fetch", "fetch into copy")
    try:
        line = one_line_error(run("fetch", src, out, "--quiet"))
        assert f"process {holder.pid}" in line and "fetch into copy" in line
        assert sorted(os.listdir(out)) == [".fetch"]
    finally:
        holder.kill()
        holder.wait()
    assert run("fetch", src, out, "--quiet").exit_code == 0
    assert sorted(os.listdir(out)) == sorted(os.listdir(src))  # lock, marker and temporaries gone


# --------------------------------------------------------------------------- no file outside the set


def hostile_set(tmp_path, how: str) -> str:
    """A set whose manifest (with a valid id) names a shard outside its folder."""
    src = make_toy_set(str(tmp_path / "set"), count=16, size=16, per_shard=8)
    outside = tmp_path / "outside.tar"
    os.replace(os.path.join(src, "shard-000001.tar"), outside)
    data = json.loads(open(os.path.join(src, MANIFEST)).read())
    if how == "symlink":
        os.symlink(outside, os.path.join(src, "shard-000001.tar"))
    else:
        data["shards"][1]["name"] = {"dotdot": "../outside.tar", "absolute": str(outside)}[how]
    write_manifest(src, data)
    return src


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
@pytest.mark.parametrize("command", ["verify", "info", "show", "publish", "loader"])
def test_a_manifest_naming_a_file_outside_its_set_is_refused(tmp_path, how, command):
    src = hostile_set(tmp_path, how)
    if command == "loader":  # every trainer's loader reads the set through read_manifest
        with pytest.raises(Exception, match="outside the set's folder"):
            read_manifest(src)
        return
    extra = {"show": ["--out", tmp_path / "g.png"], "publish": [tmp_path / "pub", "--quiet"]}.get(command, [])
    line = one_line_error(run(command, src, *extra))
    assert "outside the set's folder" in line and ("shard-000001" in line or "outside.tar" in line)
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "pub").exists()


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_merge_refuses_a_piece_naming_a_file_outside(tmp_path, how):
    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    assert small_render(src, out, "--shard-range", "0:2").exit_code == 0
    assert small_render(src, out, "--shard-range", "2:3").exit_code == 0
    piece = sorted(out.glob("manifest.part-*.json"))[0]
    data = json.loads(piece.read_text())
    data["shards"][0]["name"] = "../x.tar" if how == "dotdot" else str(tmp_path / "x.tar")
    piece.write_text(json.dumps(data))
    line = one_line_error(run("merge", out))
    assert "outside the set's folder" in line and not (out / MANIFEST).exists()


def test_fetch_refuses_a_non_empty_folder_that_holds_no_copy_of_the_set(tmp_path):
    src = make_toy_set(str(tmp_path / "src"), count=16, size=16, per_shard=8)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my work")
    line = one_line_error(run("fetch", src, out, "--quiet"))
    assert "not empty and holds no copy" in line and "notes.txt" in line
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_fetch_refuses_a_folder_holding_an_interrupted_fetch_of_another_set(tmp_path, monkeypatch):
    a = make_toy_set(str(tmp_path / "a"), count=16, size=16, per_shard=8)
    b = make_toy_set(str(tmp_path / "b"), count=16, size=16, per_shard=8, seed=3)
    out = tmp_path / "copy"

    def stop(self, e):
        raise share.DiskFull(f"{out}: no space left")

    monkeypatch.setattr(share._Fetcher, "shard", stop)
    assert run("fetch", a, out, "--quiet").exit_code == 1  # interrupted: its marker stays
    monkeypatch.undo()
    before = snapshot(out)
    line = one_line_error(run("fetch", b, out, "--quiet"))
    assert "interrupted fetch of another set" in line and read_manifest(a).id in line
    assert snapshot(out) == before
    assert run("fetch", a, out, "--quiet").exit_code == 0  # its own fetch resumes


# --------------------------------------------------------------------------- damaged sets


def test_info_prints_the_true_count_of_each_shard(tmp_path):
    src = make_toy_set(str(tmp_path / "set"), count=40, size=16, per_shard=16, shard_counts=[16, 16, 8])
    res = run("info", src)
    assert res.exit_code == 0 and "3 (2 x 16 + 1 x 8 samples)" in res.output


def damage(src: str, how: str) -> str:
    """Damage shard 1 of a toy set: remove it, put an undecodable image in it, or break a tar header."""
    path = os.path.join(src, "shard-000001.tar")
    if how == "missing":
        os.remove(path)
    elif how == "bad image":
        m = read_manifest(src)
        e = m.shards[1]
        samples = [(sample_key(i), {"png": b"\x89PNG not really", "json": b"{}"}) for i in range(e.first, e.first + e.count)]
        write_shard(path, e.first, samples)
    else:  # a header in the middle: its checksum no longer matches, and tar reads end there
        with tarfile.open(path) as tar:
            offset = tar.getmembers()[6].offset
        with open(path, "r+b") as f:
            f.seek(offset + 148)
            f.write(b"99999")
    return path


@pytest.mark.parametrize("how", ["missing", "bad image", "bad tar header"])
def test_show_on_a_damaged_set_is_one_line(tmp_path, how):
    src = make_toy_set(str(tmp_path / "set"), count=16, size=16, per_shard=8)
    damage(src, how)
    line = one_line_error(run("show", src, "--out", tmp_path / "g.png", "--count", 16))
    assert "shard-000001.tar" in line and "augment verify" in line
    assert ("missing" if how == "missing" else "damaged") in line
    assert not (tmp_path / "g.png").exists() and not temps(tmp_path)


@pytest.mark.parametrize("how", ["missing", "bad image"])
def test_info_on_a_damaged_set_ends_in_one_line(tmp_path, how):
    src = make_toy_set(str(tmp_path / "set"), count=16, size=16, per_shard=8)
    damage(src, how)  # a rewritten shard changes size; a flipped header byte would not (verify finds it)
    res = run("info", src)
    line = last_error(res)
    assert res.exit_code == 1 and "shard-000001.tar" in line and "augment verify" in line
    assert "count    16 patches" in res.output  # the summary itself is still printed


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": "single-image-ssl/shards", "shards": 3}), ""])
def test_info_and_show_on_a_damaged_manifest_are_one_line(tmp_path, text):
    src = make_toy_set(str(tmp_path / "set"), count=16, size=16, per_shard=8)
    with open(os.path.join(src, MANIFEST), "w") as f:
        f.write(text)
    for args in (["info", src], ["show", src, "--out", tmp_path / "g.png"], ["verify", src]):
        assert "not a shard-set manifest" in one_line_error(run(*args))


def test_an_empty_shard_location_says_so(tmp_path):
    with pytest.raises(Exception, match="no shard set given"):  # a trainer's missing --shards
        read_manifest("")


# --------------------------------------------------------------------------- full disk, unwritable outputs


def fill_disk(monkeypatch, room=100):
    """Every temporary file of augment.files.atomic_write gets ``room`` bytes before ENOSPC."""
    real_open = open
    monkeypatch.setattr(files, "open", lambda p, mode="r", *a, **k: LimitedFile(real_open(p, mode, *a, **k), room)
                        if files.TMP_MARK in str(p) and "w" in mode else real_open(p, mode, *a, **k), raising=False)


def test_show_on_a_full_disk_keeps_the_last_grid_and_names_folder_and_need(tmp_path, monkeypatch):
    src = make_toy_set(str(tmp_path / "set"), count=16, size=16, per_shard=8)
    grid = tmp_path / "figs" / "grid.png"
    assert run("show", src, "--out", grid, "--count", 4).exit_code == 0
    good = grid.read_bytes()
    fill_disk(monkeypatch)
    line = one_line_error(run("show", src, "--out", grid, "--count", 16, "--seed", 3))
    assert str(tmp_path / "figs") in line and "no space left" in line and "bytes are needed" in line
    assert grid.read_bytes() == good and not temps(tmp_path / "figs")


def test_publish_on_a_full_disk_keeps_the_last_copy_and_leaves_no_partial(tmp_path, monkeypatch):
    src = make_toy_set(str(tmp_path / "set"), count=16, size=16, per_shard=8)
    dest = tmp_path / "pub"
    assert run("publish", src, dest, "--quiet").exit_code == 0
    good = snapshot(dest)
    fill_disk(monkeypatch, room=3000)
    line = one_line_error(run("publish", src, dest, "--quiet"))
    assert str(dest) in line and "no space left" in line and "bytes are needed" in line
    assert snapshot(dest) == good and not temps(dest)


def test_publish_refuses_before_copying_when_the_destination_is_too_small(tmp_path, monkeypatch):
    src = make_toy_set(str(tmp_path / "set"), count=16, size=16, per_shard=8)
    monkeypatch.setattr(share.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    line = one_line_error(run("publish", src, tmp_path / "pub", "--quiet"))
    total = sum(e.bytes for e in read_manifest(src).shards)
    need = int(line.split("needs about ")[1].split()[0].replace(",", ""))
    assert need > total and "1,000 are free" in line and os.listdir(tmp_path / "pub") == []


@pytest.fixture
def tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only; the test skips elsewhere): a real full disk."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-ENOSPC tests cover the same paths")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_show_on_a_real_full_tmpfs(tmp_path, tmpfs):
    src = make_toy_set(str(tmp_path / "set"), count=64, size=32, per_shard=16)
    (tmpfs / "filler").write_bytes(os.urandom(40_000))
    assert run("show", src, "--out", tmpfs / "small.png", "--count", 1).exit_code == 0
    good = (tmpfs / "small.png").read_bytes()
    line = one_line_error(run("show", src, "--out", tmpfs / "small.png", "--count", 64))
    assert str(tmpfs) in line and "no space left" in line
    assert (tmpfs / "small.png").read_bytes() == good and sorted(os.listdir(tmpfs)) == ["filler", "small.png"]


def afile(tmp_path):
    p = tmp_path / "afile"
    p.write_text("x")
    return p


@pytest.mark.parametrize("where", ["under a file", "pseudo fs", "read-only"])
@pytest.mark.parametrize("command", ["render", "show", "fetch", "publish"])
def test_an_out_that_cannot_be_created_is_one_line(tmp_path, monkeypatch, where, command):
    src = make_toy_set(str(tmp_path / "set"), count=16, size=16, per_shard=8)
    if where == "under a file":
        out = afile(tmp_path) / "sub"
    elif where == "pseudo fs":
        out = "/proc/augment-test/out"
    else:  # EROFS from the OS, injected: a read-only mount needs root
        out = tmp_path / "ro" / "out"
        real = os.makedirs

        def ro(p, *a, **k):
            if str(p).startswith(str(tmp_path / "ro")):
                raise OSError(errno.EROFS, "Read-only file system", str(p))
            return real(p, *a, **k)

        monkeypatch.setattr(os, "makedirs", ro)
    args = {"render": ["render", "--image", textured(tmp_path / "s.png"), "--count", 8, "--size", 16, "--quiet",
                       "--out", out],
            "show": ["show", src, "--out", f"{out}/g.png"], "fetch": ["fetch", src, out, "--quiet"],
            "publish": ["publish", src, out, "--quiet"]}[command]
    line = one_line_error(run(*args))
    assert {"under a file": "a file stands where a folder is needed", "pseudo fs": "/proc/augment-test",
            "read-only": "read-only"}[where] in line
    assert not os.path.exists(out)


RANGES = [("render", "--n", 0), ("render", "--count", -1), ("render", "--size", 0), ("render", "--seed", -1),
          ("render", "--workers", 0), ("render", "--quality", 101), ("render", "--samples-per-shard", 0),
          ("render", "--min-area", 0), ("render", "--max-area", 1.5), ("render", "--aspect", 0),
          ("render", "--max-angle", 90), ("render", "--flip", -0.1), ("render", "--brightness", 2),
          ("render", "--contrast", -1), ("render", "--saturation", 1.1), ("render", "--hue", 0.6),
          ("render", "--max-pixels", 0), ("render", "--source-cache", -1), ("verify", "--rerender", -1),
          ("verify", "--seed", -2), ("show", "--count", 0), ("show", "--cols", 0), ("show", "--seed", -1),
          ("fetch", "--jobs", 0), ("fetch", "--timeout", 0)]


@pytest.mark.parametrize("command,option,value", RANGES, ids=[f"{c} {o} {v}" for c, o, v in RANGES])
def test_numeric_options_out_of_range_are_refused_by_the_parser(tmp_path, command, option, value):
    pos = {"render": ["--image", "A", "--out", tmp_path / "o"], "verify": [tmp_path], "show": [tmp_path, "--out", "g.png"],
           "fetch": [tmp_path, tmp_path / "o"]}[command]
    line = last_error(run(command, *pos, option, value))
    assert option in line and "is not in the range" in line  # click names the range, e.g. "1<=x<=100"
    assert not (tmp_path / "o").exists()


def test_worker_defaults_never_exceed_the_usable_cpus():
    cpus = len(os.sched_getaffinity(0))
    for name, cmd in cli.commands.items():
        for p in cmd.params:
            if p.name in ("workers",):
                assert p.default <= cpus, (name, p.name, p.default)


# --------------------------------------------------------------------------- sources at scale


@pytest.fixture
def many_sources(tmp_path):
    folder = tmp_path / "sources"
    folder.mkdir()
    for k in range(6):
        textured(folder / f"{k}.png", 80 + 8 * k, 60 + 4 * k, seed=k)
    return str(folder)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_tiny_source_cache_renders_the_same_bytes(tmp_path, many_sources, workers):
    recipe = Recipe(count=60, size=16, n=5, image_format="png", samples_per_shard=16)
    hashes = []
    for mib in (1 << 20, 0):  # everything resident / only the pyramid in use
        cfg = RenderConfig(many_sources, str(tmp_path / f"cache{mib}"), recipe, workers=workers, progress=False,
                           source_cache_mib=mib)
        render(cfg)
        hashes.append([e.sha256 for e in read_manifest(cfg.out).shards])
    assert hashes[0] == hashes[1]


def test_the_source_cache_stays_within_its_budget_and_decodes_each_source_once_per_shard(many_sources, monkeypatch):
    import augment.sources as S

    srcs = load_all(many_sources, 5, 0)
    cache = SourceCache(srcs, 16, budget=2 * srcs[0].width * srcs[0].height * 8)
    resident = len(cache._resident)
    assert 1 <= resident < 5
    loads = []
    real = S.load
    monkeypatch.setattr(S, "load", lambda *a, **k: (loads.append(a[0]), real(*a, **k))[1])
    shard = [i % 5 for i in range(40)]  # one shard of 40 samples cycling through 5 sources
    for k in cache.order(shard):
        cache[shard[k]]
        assert cache._bytes <= cache.budget
    assert sorted(loads) == sorted(set(loads)) and len(loads) == 5 - resident  # the resident are not decoded


@pytest.mark.parametrize("workers", [1, 2])
def test_a_source_changed_during_the_render_is_one_line(tmp_path, many_sources, monkeypatch, workers):
    import augment.render as R

    real = R.load_all

    def then_change(*a, **k):  # the sources are read, then one changes before the workers decode it again
        out = real(*a, **k)
        textured(out[2].path, seed=99)
        return out

    monkeypatch.setattr(R, "load_all", then_change)
    res = run("render", "--image", many_sources, "--n", 5, "--count", 40, "--size", 16, "--samples-per-shard", 8,
              "--source-cache", 0, "--workers", workers, "--quiet", "--out", tmp_path / "set")
    line = one_line_error(res)
    assert "changed since the render started" in line and os.path.basename(real(many_sources, 5, 0)[2].path) in line


# --------------------------------------------------------------------------- issue #23: killed and interrupted renders


def test_a_zombie_is_not_alive():
    """A killed worker stays a zombie until reaped; kill(pid, 0) calls it alive, pid_alive must not."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie, deterministically
    try:
        assert not files.pid_alive(p.pid)
    finally:
        p.wait()


# The parent takes a lock and forks a child (as the pool does), then SIGKILLs itself alone. The child
# prints its pid and blocks; with die=1 it first asks to die with its parent (render's worker init).
ORPHAN = ("import os, signal, sys\nfrom augment.lock import folder_lock\nfrom augment import render\n"
          "with folder_lock(sys.argv[1], 'render into a test set'):\n"
          "    parent, (r, w) = os.getpid(), os.pipe()\n"
          "    if os.fork() == 0:\n"
          "        if sys.argv[2] == '1':\n"
          "            render._init_worker(parent)\n"
          "        print(os.getpid(), flush=True); os.write(w, b'x'); sys.stdin.read(); os._exit(0)\n"
          "    os.read(r, 1); os.kill(parent, signal.SIGKILL)\n")


def test_a_worker_orphaned_by_sigkill_does_not_hold_the_lock(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", ORPHAN, str(tmp_path / "lockdir"), "0"], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    assert p.wait(30) == -9
    try:
        assert files.pid_alive(child)  # the orphan runs on, with its copy of the lock's fd closed at fork
        with folder_lock(str(tmp_path / "lockdir"), "the re-run") as lock:
            assert lock.previous.what == "render into a test set"
    finally:
        p.stdin.close()  # the orphan exits


def test_render_workers_die_with_their_parent(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", ORPHAN, str(tmp_path / "lockdir"), "1"], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    int(p.stdout.readline())
    try:
        # EOF on stdout comes only when every holder of its write end is gone: the parent and the worker
        # (its stdin is still open, so it cannot have ended by itself). Without the request it blocks forever.
        import select

        assert select.select([p.stdout], [], [], 60)[0], "the orphaned worker outlived its parent"
        assert p.stdout.read() == "" and p.wait(30) == -9
    finally:
        p.stdin.close()


def test_ctrl_c_on_a_render_is_one_line_naming_what_is_kept_and_the_command_that_resumes(tmp_path, monkeypatch):
    import augment.render as R

    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    real_shard, calls = R.Renderer.shard, []

    def interrupted_second(self, o, si):
        calls.append(si)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_shard(self, o, si)

    monkeypatch.setattr(R.Renderer, "shard", interrupted_second)
    line = one_line_error(small_render(src, out), code=130)
    assert line.startswith(f"Error: render into {out} interrupted: 1 of 3 shards are complete and kept; "
                           f"resume with: python -m augment render --image {src} ")
    assert line.endswith(f"--out {out}") and temps(out) == [] and not (out / MANIFEST).exists()
    monkeypatch.setattr(R.Renderer, "shard", real_shard)
    again = small_render(src, out)
    assert again.exit_code == 0 and "2 shards rendered" in again.output and "1 kept" in again.output


def test_verify_names_stray_temporary_files_and_whether_they_are_safe_to_remove(tmp_path):
    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    assert small_render(src, out).exit_code == 0
    (out / "shard-000001.tar.partial-4242").write_bytes(b"half")
    res = run("verify", out)
    assert res.exit_code == 0 and res.output.strip().endswith("OK (3 shards, 12 samples)")
    assert ("shard-000001.tar.partial-4242: a temporary file left by an interrupted run; not part of the set, "
            "safe to remove (the next render or fetch here removes it too)") in res.output.splitlines()
    holder = hold_lock(out / ".render", what="render into it")
    try:
        res = run("verify", out)
        assert res.exit_code == 0
        assert f"shard-000001.tar.partial-4242: a temporary file; process {holder.pid} on" in res.output
        assert "(render into it)" in res.output and "may be writing it: leave it" in res.output
    finally:
        holder.kill()
        holder.wait()


def test_verify_names_every_stray_file_and_folder_another_tool_left_in_a_set(tmp_path):
    # e.g. a conversion written into the set's folder (litdata's chunks and index.json), a copied shard
    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    assert small_render(src, out).exit_code == 0
    (out / "chunk-0-0.bin").write_bytes(b"x")
    (out / "index.json").write_text("{}")
    (out / "shard-000007.tar").write_bytes(b"y")
    (out / "notes").mkdir()
    res = run("verify", out)
    assert res.exit_code == 0 and res.output.strip().endswith("OK (3 shards, 12 samples)")
    tail = "not in the manifest, not part of the set (no reader opens it; publish does not copy it); " \
           "move it out of the set's folder"
    lines = res.output.splitlines()
    assert [ln for ln in lines if ln.endswith(tail)] == [
        f"chunk-0-0.bin: a file {tail}", f"index.json: a file {tail}", f"notes/: a folder {tail}",
        f"shard-000007.tar: a shard {tail}"]
    (out / "CARD.md").write_text("card")  # publish's own file is part of a published set
    assert "CARD.md" not in run("verify", out).output


# --------------------------------------------------------------------------- issue #23: hostile manifests


def rewrite(src: str, edit, keep_id: bool = False) -> None:
    """Edit a set's manifest; its id is recomputed unless ``keep_id`` (a hand edit that forgot it)."""
    with open(os.path.join(src, MANIFEST)) as f:
        data = json.load(f)
    edit(data)
    if keep_id:
        with open(os.path.join(src, MANIFEST), "w") as f:
            json.dump(data, f)
    else:
        write_manifest(src, data)


@pytest.mark.parametrize("how, expect", [
    ("latin1", "not a shard-set manifest (not UTF-8 text: byte"),
    ("nested", "not a shard-set manifest (JSON nested too deeply); re-render or re-fetch the set"),
    ("version2", "not a shard-set manifest this tool reads (format_version 2, this tool reads 1); upgrade the "
                 "package"),
    ("versionx", "not a shard-set manifest this tool reads (format_version 'x', this tool reads 1); re-render "
                 "or re-fetch the set"),
    ("negative", "not a shard-set manifest (bad or missing field 'count': -1 is not an integer >= 1); re-render "
                 "or re-fetch the set"),
])
def test_hostile_manifests_are_one_line_in_every_reader(tmp_path, how, expect):
    src = make_toy_set(str(tmp_path / "set"), count=16, size=16, per_shard=8)
    path = os.path.join(src, MANIFEST)
    if how == "latin1":
        with open(path, "rb") as f:
            data = f.read().replace(b'"format"', b'"f\xe9rmat"', 1) + b"\xff"
        with open(path, "wb") as f:
            f.write(data)
    elif how == "nested":
        with open(path, "w") as f:
            f.write("[" * 200_000 + "]" * 200_000)
    elif how.startswith("version"):
        rewrite(src, lambda d: d.update(format_version=2 if how == "version2" else "x"), keep_id=True)
    else:
        rewrite(src, lambda d: d.update(count=-1))
    before = snapshot(src)
    for args in (["info", src], ["verify", src], ["show", src, "--out", tmp_path / "g.png"]):
        line = one_line_error(run(*args))
        assert line.startswith(f"Error: {path}: {expect}") and (how == "latin1" or line == f"Error: {path}: {expect}"), line
    with pytest.raises(click.ClickException, match="not a shard-set manifest"):
        read_manifest(src)
    assert snapshot(src) == before and not (tmp_path / "g.png").exists()


def test_a_manifest_listing_half_its_shards_under_the_old_id_is_refused_before_training(tmp_path):
    src = make_toy_set(str(tmp_path / "set"), count=64, size=16, per_shard=8)
    old = read_manifest(src).id
    rewrite(src, lambda d: d.update(shards=d["shards"][:4], count=32), keep_id=True)
    with pytest.raises(click.ClickException) as e:  # the one reader: the trainers' loaders call it too
        read_manifest(src)
    assert f"its stored id {old} disagrees with its content" in e.value.message
    line = one_line_error(run("info", src))
    assert line.startswith(f"Error: {os.path.join(src, MANIFEST)}: its stored id {old} disagrees")
    assert line.endswith("re-render or re-publish the set (a set's identifier must prove its bytes)")
    from train.loader.stream import make_loader

    with pytest.raises(click.ClickException, match=f"its stored id {old} disagrees"):  # before any step
        make_loader(src, batch_size=4, workers=0, seed=0)


# --------------------------------------------------------------------------- issue #23: sizes and disk


def test_a_huge_size_is_refused_before_anything_is_read(tmp_path):
    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    line = one_line_error(run("render", "--image", src, "--size", 100000, "--count", 10, "--out", out))
    assert line == ("Error: --size 100000 is larger than 4096 (a patch that size needs about 37 GiB per warp); "
                    "pass a smaller --size")
    assert not out.exists()


def test_a_render_larger_than_the_free_space_is_refused_with_the_estimate(tmp_path, monkeypatch):
    import augment.render as R

    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    real = R.shutil.disk_usage
    monkeypatch.setattr(R.shutil, "disk_usage", lambda p: real(p)._replace(free=2 ** 30))
    line = one_line_error(run("render", "--image", src, "--size", 32, "--count", 100_000_000_000, "--out", out))
    assert line == (f"Error: --out {out}: 100,000,000,000 patches need about 419,998.2 GiB but {tmp_path} has "
                    f"1.0 GiB free; lower --count or --size, or write elsewhere")
    assert not out.exists()


def test_a_render_prints_its_estimate_time_and_rate(tmp_path):
    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    res = run("render", "--image", src, "--count", 12, "--size", 16, "--samples-per-shard", 4, "--out", out)
    assert res.exit_code == 0, res.output
    assert f"render {out}: about 0.0 MiB on disk" in res.output
    assert f"{out}: 3 shards rendered in " in res.output and " patches/s), 0 kept; set sis1-" in res.output


def test_a_real_ctrl_c_on_a_two_worker_render_is_one_line_and_the_command_resumes(tmp_path):
    """SIGINT to the whole process group (what a terminal's Ctrl-C does), once the first shard is done."""
    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    cmd = [sys.executable, "-m", "augment", "render", "--image", src, "--count", 4000, "--size", 16,
           "--samples-per-shard", 40, "--workers", 2, "--quiet", "--out", out]
    # the child gets a terminal's default SIGINT whatever this process's disposition is (an ignored SIGINT
    # is inherited across exec, and the render would then never see the Ctrl-C)
    p = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         start_new_session=True, env=dict(os.environ, PYTHONPATH=ROOT),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Wait (bounded) for the first shard's sidecar, written after its tar: the render is under way with
    # 99 shards to go, so the signal cannot miss it.
    first = out / ".render" / "shard-000000.json"
    for _ in range(6000):
        if first.exists() or p.poll() is not None:
            break
        time.sleep(0.01)
    assert first.exists() and p.poll() is None
    os.killpg(p.pid, signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in stderr and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: render into {out} interrupted: ")
    kept = int(lines[0].split("interrupted: ")[1].split(" of ")[0])
    assert 1 <= kept < 100 and lines[0].endswith(f"--out {out}") and " of 100 shards are complete and kept" in lines[0]
    resume = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert resume[:4] == ["python", "-m", "augment", "render"]
    resume[0] = sys.executable  # this virtualenv's python
    assert temps(out) == []
    again = subprocess.run(resume + ["--quiet"], cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{100 - kept} shards rendered" in again.stdout and f"{kept} kept; set sis1-" in again.stdout


def test_sigkill_of_the_render_alone_then_an_immediate_rerun_finishes_with_no_partials(tmp_path):
    """The issue's field case: kill -9 of the main process only; its workers must not write on, hold the
    lock, or leave temporary files in the finished set."""
    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    # An end-to-end check of the whole path; the unit tests above (orphan, die_with_parent) are the ones
    # that fail without the fixes: here pool workers also exit by themselves once their task pipe closes.
    cmd = [str(c) for c in [sys.executable, "-m", "augment", "render", "--image", src, "--count", 4000, "--size",
                            16, "--samples-per-shard", 40, "--workers", 2, "--quiet", "--out", out]]
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    first = out / ".render" / "shard-000000.json"
    for _ in range(6000):  # bounded wait for the first complete shard: the render is under way
        if first.exists() or p.poll() is not None:
            break
        time.sleep(0.01)
    assert first.exists() and p.poll() is None
    p.kill()
    assert p.wait(30) == -9
    p.stdout.close()
    p.stderr.close()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert " kept; set sis1-" in again.stdout and temps(out) == []
    assert read_manifest(out).count == 4000


@pytest.mark.parametrize("text", [b"[" * 200_000, b'{"job": "\xff\xfe"}'])
def test_hostile_render_bookkeeping_is_one_line_for_merge_and_render(tmp_path, text):
    """The same faults as a hostile manifest, in a --shard-range piece and in .render/job.json."""
    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    assert small_render(src, out, "--shard-range", "0:2").exit_code == 0
    piece = sorted(out.glob("manifest.part-*.json"))[0]
    piece.write_bytes(text)
    line = one_line_error(run("merge", out))
    assert line.startswith(f"Error: {piece}: unreadable piece (") and line.endswith("re-run that --shard-range job")
    (out / ".render" / "job.json").write_bytes(text)
    before = snapshot(out)
    line = one_line_error(small_render(src, out))
    assert line == (f"Error: {out / '.render' / 'job.json'}: unreadable render bookkeeping; delete {out} or use a "
                    f"new --out")
    assert snapshot(out) == before and not (out / MANIFEST).exists()


@pytest.mark.parametrize("command", ["pack", "fetch", "show"])
def test_ctrl_c_in_any_augment_command_is_one_line_and_exit_130(command, monkeypatch, tmp_path):
    import augment.pack
    import augment.show

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    target = {"pack": (augment.pack, "pack"), "fetch": (share, "fetch_set"),
              "show": (augment.show, "show")}[command]
    monkeypatch.setattr(*target, interrupt)
    (tmp_path / "folder" / "c").mkdir(parents=True)
    argv = {"pack": ["pack", str(tmp_path / "folder"), "--out", str(tmp_path / "set")],
            "fetch": ["fetch", "http://127.0.0.1:9/set", str(tmp_path / "set")],
            "show": ["show", str(tmp_path / "folder"), "--out", str(tmp_path / "grid.png")]}[command]
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 130, r.output
    assert r.output.startswith(f"Error: augment {command} interrupted: ") and len(r.output.strip().splitlines()) == 1
    assert "Traceback" not in r.output


# --------------------------------------------------------------------------- issue #23: second field test


def test_fetch_from_a_local_folder_with_a_truncated_shard_names_it_damaged(tmp_path):
    src = make_toy_set(str(tmp_path / "src"), count=32, size=16, per_shard=8)
    shard = os.path.join(src, "shard-000001.tar")
    size = os.path.getsize(shard)
    os.truncate(shard, size // 2)
    out = tmp_path / "out"
    for _ in range(2):   # a second run says the same: running again cannot help
        line = one_line_error(run("fetch", src, out, "--quiet"))
        assert line == (f"Error: {src}: 1 shard(s) not fetched after 2 attempts: shard-000001.tar: the source's copy "
                        f"has {size // 2:,} bytes, manifest says {size:,}; the copy in {src} is damaged: verify it "
                        f"(`python -m augment verify {src}`), then re-render or re-fetch it")
    assert not [n for n in os.listdir(out) if "partial" in n] and not (out / MANIFEST).exists()


def test_publish_into_a_folder_of_other_files_is_refused_and_a_rerun_into_its_own_is_not(tmp_path):
    src = make_toy_set(str(tmp_path / "src"), count=16, size=16, per_shard=8)
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    line = one_line_error(run("publish", src, data, "--quiet"))
    assert line == (f"Error: {data}: holds 1 other entry (e.g. train) and no set; publish "
                    f"{read_manifest(src).id} to a new or empty destination")
    assert os.listdir(data) == ["train"]
    dest = tmp_path / "pub"
    dest.mkdir()
    (dest / "shard-000000.tar").write_bytes(b"half")     # an interrupted publish of this set: resumed
    assert run("publish", src, dest, "--quiet").exit_code == 0 and read_manifest(dest).id == read_manifest(src).id


@pytest.mark.parametrize("args, moot, switch", [
    (("--no-scale", "--min-area", "0.5"), "--min-area", "--no-scale"),
    (("--no-rotation", "--max-angle", "10"), "--max-angle", "--no-rotation"),
    (("--no-jitter", "--hue", "0.2"), "--hue", "--no-jitter"),
])
def test_an_option_made_moot_by_an_ablation_switch_is_refused(tmp_path, args, moot, switch):
    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    line = one_line_error(small_render(src, out, *args))
    assert line == (f"Error: {moot} has no effect with {switch}; drop one of the two (the set would record a "
                    f"setting that changes none of its bytes)")
    line = one_line_error(small_render(src, out, "--quality", "80"))        # S = 16: a PNG set
    assert line.startswith("Error: --quality sets JPEG quality, and this set is PNG")
    assert not out.exists()
    assert small_render(src, out, "--format", "jpg", "--quality", "80").exit_code == 0


def test_small_faults_of_show_noise_and_verify_say_what_happened(tmp_path):
    src, out = textured(tmp_path / "s.png"), tmp_path / "set"
    assert small_render(src, out).exit_code == 0
    r = run("show", out, "--count", 100, "--out", tmp_path / "g.png")
    assert r.exit_code == 0 and "--count 100: the set holds 12 patches; showing all 12" in r.output
    (tmp_path / "afile").write_text("x")
    line = one_line_error(run("noise", "--out", tmp_path / "afile" / "n.png"))
    assert line == (f"Error: --out {tmp_path}/afile/n.png: cannot write the noise image ({tmp_path}/afile: a file "
                    f"stands where a folder is needed; choose another path)")
    line = one_line_error(run("verify", out, "--rerender", 2, "--sources", tmp_path / "nope.png"))
    assert line.startswith(f"Error: --sources {tmp_path}/nope.png: no such file or folder")
    line = one_line_error(run("info", src))
    assert line.startswith(f"Error: {src}: a file, not a shard set; give the folder")
