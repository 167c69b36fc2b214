"""Faults and bad input for the probes: each gives one line naming the input and the fix, and loses nothing.

One fast test (or a few cases) per fault class of docs/reliability-probe.md, on tiny data made here. A
full disk is an injected ENOSPC on the write itself, and, where the machine allows mounting one (root),
a real 256 KiB tmpfs.
"""
import builtins
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from tests.faults import LimitedFile
from probe import cache as fcache
from probe import figures, table
from probe.linear import RESULT, ProbeConfig, main
from train.config import available_cpus
from tests.test_probe_linear import make_ckpt, make_tree
from tests.test_probe_report import fake_result


def run(args):
    r = CliRunner().invoke(main, args)
    assert "Traceback" not in r.output, r.output
    return r


def cifar_args(tmp_path, ck, root, out="o", *extra):
    return ["--checkpoint", ck, "--dataset", "imagefolder", "--data-root", root, "--out", str(tmp_path / out), "--epochs", "1",
            "--workers", "0", "--batch-size", "8", "--device", "cpu", "--cache", str(tmp_path / "cache"),
            "--layers", "conv1", *extra]


def entry_of(tmp_path, out="o"):
    return json.load(open(tmp_path / out / RESULT))["resolved"]["cache"]["folder"]


def one_line_error(r, *parts):
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and all(p in lines[0] for p in parts), r.output


def truncated_png(path):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 99, np.uint8)).save(buf, "PNG")
    open(path, "wb").write(buf.getvalue()[: len(buf.getvalue()) // 2])


# --------------------------------------------------------------------------- undecodable images


def test_bad_image_in_a_cifar_folder_stops_or_is_skipped(tmp_path):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    bad = os.path.join(root, "train", "c1", "9.png")
    truncated_png(bad)
    r = run(cifar_args(tmp_path, ck, root))
    one_line_error(r, bad, "not a readable image", "--skip-bad-images")
    assert not os.path.exists(tmp_path / "o" / RESULT)
    r = run(cifar_args(tmp_path, ck, root, "o", "--skip-bad-images"))
    assert r.exit_code == 0, r.output
    assert "skipped 1 unreadable image file(s) (1 in train)" in r.output
    res = json.load(open(tmp_path / "o" / RESULT))
    assert list(res["resolved"]["skipped_images"]["train"]) == [bad] and res["resolved"]["train_count"] == 12
    # the cache remembers the skipped file: a later run without the flag stops again, naming it
    one_line_error(run(cifar_args(tmp_path, ck, root, "o2")), bad, "--skip-bad-images")


def test_bad_image_in_an_imagenet_folder_stops_or_is_skipped(tmp_path):
    root, ck = make_tree(tmp_path / "tree", splits=("train", "val"), per_class=2, size=40), make_ckpt(tmp_path, "alexnet")
    bad = os.path.join(root, "val", "c0", "zz.jpg")
    open(bad, "wb").write(b"not a jpeg at all")
    args = ["--checkpoint", ck, "--dataset", "imagefolder", "--data-root", root, "--epochs", "1", "--workers", "0",
            "--batch-size", "4", "--resize", "36", "--crop", "32", "--layers", "conv1", "--device", "cpu"]
    one_line_error(run(args + ["--out", str(tmp_path / "a")]), bad, "not an image PIL can identify")
    r = run(args + ["--out", str(tmp_path / "b"), "--skip-bad-images"])
    assert r.exit_code == 0, r.output
    res = json.load(open(tmp_path / "b" / RESULT))
    assert list(res["resolved"]["skipped_images"]["val"]) == [bad] and res["resolved"]["eval_count"] == 6


# --------------------------------------------------------------------------- incomplete or damaged caches


def test_truncated_cache_file_is_rebuilt_with_one_line(tmp_path):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    assert run(cifar_args(tmp_path, ck, root, "a")).exit_code == 0
    path = fcache.layer_file(entry_of(tmp_path, "a"), "train", "conv1")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)  # what a copy interrupted by a full disk leaves
    r = run(cifar_args(tmp_path, ck, root, "b"))
    assert r.exit_code == 0, r.output
    notes = [ln for ln in r.output.splitlines() if "damaged" in ln]
    assert len(notes) == 1 and path in notes[0] and "rebuilding it" in notes[0]
    a, b = (json.load(open(tmp_path / o / RESULT)) for o in "ab")
    assert b["top1"] == a["top1"] and b["resolved"]["cache"]["stats"]["train"]["layers_rebuilt"] == ["conv1"]
    assert os.path.getsize(path) == size


def test_features_without_their_record_are_rebuilt(tmp_path):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    assert run(cifar_args(tmp_path, ck, root, "a")).exit_code == 0
    path = fcache.layer_file(entry_of(tmp_path, "a"), "test", "conv1")
    os.remove(fcache.record_file(path))  # killed between the features' rename and the record's
    r = run(cifar_args(tmp_path, ck, root, "b"))
    assert r.exit_code == 0 and "record is missing" in r.output and "rebuilding it" in r.output
    assert os.path.isfile(fcache.record_file(path))


def test_changed_cache_bytes_are_caught_by_the_digest(tmp_path):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    assert run(cifar_args(tmp_path, ck, root, "a")).exit_code == 0
    path = fcache.layer_file(entry_of(tmp_path, "a"), "train", "conv1")
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0x10]))  # one flipped bit: same length, a different feature value
    one_line_error(run(cifar_args(tmp_path, ck, root, "b")), path, "sha256", "run the same command again")
    assert not os.path.exists(path)
    r = run(cifar_args(tmp_path, ck, root, "b"))
    assert r.exit_code == 0 and json.load(open(tmp_path / "b" / RESULT))["top1"] == \
        json.load(open(tmp_path / "a" / RESULT))["top1"]


def test_interrupted_cache_write_leaves_nothing_and_killed_temps_are_removed(tmp_path, monkeypatch):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    calls = []

    def interrupt(self, *a, **kw):
        calls.append(1)
        raise KeyboardInterrupt  # a Ctrl-C in the middle of the backbone pass

    monkeypatch.setattr(fcache.LayerWriter, "add", interrupt)
    r = run(cifar_args(tmp_path, ck, root, "a"))
    assert r.exit_code != 0 and calls
    entry = os.path.join(tmp_path, "cache", os.listdir(tmp_path / "cache")[0])
    assert os.listdir(entry) == []
    monkeypatch.undo()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = os.path.join(entry, f"train.conv1.features.partial-{dead}")  # what a SIGKILL leaves
    open(stale, "wb").write(b"half a file")
    assert run(cifar_args(tmp_path, ck, root, "a")).exit_code == 0
    assert sorted(os.listdir(entry)) == ["test.conv1.features", "test.conv1.json", "train.conv1.features",
                                         "train.conv1.json"]


# --------------------------------------------------------------------------- caches outside the results tree


def test_default_cache_is_the_user_cache_and_probes_glob_works(tmp_path, monkeypatch, user_cache):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["--checkpoint", ck, "--dataset", "imagefolder", "--data-root", root, "--epochs", "1", "--workers", "0",
            "--batch-size", "8", "--device", "cpu", "--layers", "conv1"]
    assert run(args + ["--out", "probes/a", "--label", "MonoGAN"]).exit_code == 0
    assert os.listdir("probes") == ["a"]
    assert entry_of(tmp_path, "probes/a").startswith(str(user_cache / "single-image-ssl" / "features"))
    os.makedirs("probes/feature-cache")  # an older layout's cache folder, or a probe still running
    globbed = sorted(os.path.join("probes", d) for d in os.listdir("probes"))
    r = CliRunner().invoke(table.main, [*globbed, "--paper", "table3", "--out", "-"])
    assert r.exit_code == 0, r.output
    assert "skipped probes/feature-cache: no probe.json in it" in r.output and "(68.1)" in r.output
    r = CliRunner().invoke(figures.cli, ["layers", *globbed, "--out", "layers.png"])
    assert r.exit_code == 0 and "skipped probes/feature-cache" in r.output and os.path.isfile("layers.png")
    r = CliRunner().invoke(table.main, ["probes/feature-cache", "--out", "-"])
    one_line_error(r, "no probe results")


def test_figures_refuse_a_percentage_across_datasets(tmp_path):
    sup = fake_result(tmp_path, "sup", "cifar10", [66.0, 70.0, 72.0, 75.0], label="supervised")
    other = fake_result(tmp_path, "c100", "cifar100", [40.0, 35.0, 30.0, 25.0], label="mono")
    r = CliRunner().invoke(figures.cli, ["layers", sup, other, "--supervised", "supervised",
                                         "--out", str(tmp_path / "x.png")])
    one_line_error(r, "cifar10", "cifar100", "mono", "plot each dataset on its own")
    assert not os.path.exists(tmp_path / "x.png")
    r = CliRunner().invoke(figures.cli, ["layers", sup, other, "--out", str(tmp_path / "y.png")])
    assert r.exit_code == 0 and os.path.isfile(tmp_path / "y.png")  # absolute panel: lines labelled by dataset
    r = CliRunner().invoke(figures.cli, ["layers", other, "--paper", "table2", "--paper-rows", "a",
                                         "--supervised", "a", "--out", str(tmp_path / "z.png")])
    one_line_error(r, "imagenet", "cifar100")


# --------------------------------------------------------------------------- full disk


def enospc(*a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


class FullDisk:
    """``open`` for ``augment.files``: files opened for writing take ``budget`` bytes, then raise ENOSPC."""

    def __init__(self, budget: int):
        self.left = budget

    def __call__(self, path, mode="r", *a, **kw):
        f = builtins.open(path, mode, *a, **kw)
        return f if "w" not in mode and "a" not in mode else LimitedFile(f, partial=True, budget=self)


def test_full_disk_during_the_cache_keeps_good_files_and_leaves_no_partial(tmp_path, monkeypatch):
    import augment.files

    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    assert run(cifar_args(tmp_path, ck, root, "a")).exit_code == 0
    entry = entry_of(tmp_path, "a")
    good = {n: open(os.path.join(entry, n), "rb").read() for n in os.listdir(entry)}
    monkeypatch.setattr(augment.files, "open", FullDisk(50_000), raising=False)
    r = run(cifar_args(tmp_path, ck, root, "b") + ["--layers", "conv1,conv2"])
    one_line_error(r, entry, "no space left", "bytes are needed", "--cache")
    assert {n: open(os.path.join(entry, n), "rb").read() for n in os.listdir(entry)} == good
    assert not os.path.exists(tmp_path / "b" / RESULT)


def test_too_little_space_is_refused_before_the_backbone_pass(tmp_path, monkeypatch):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    monkeypatch.setattr(fcache.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    r = run(cifar_args(tmp_path, ck, root))
    one_line_error(r, "the feature cache needs about", "and 10 are free", "--cache DIR")


def test_full_disk_writing_the_result_keeps_the_last_one(tmp_path, monkeypatch):
    import augment.files

    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    assert run(cifar_args(tmp_path, ck, root)).exit_code == 0
    before = open(tmp_path / "o" / RESULT).read()
    monkeypatch.setattr(augment.files.os, "fsync", enospc)
    r = run(cifar_args(tmp_path, ck, root, "o", "--overwrite", "--seed", "1"))
    one_line_error(r, str(tmp_path / "o"), "no space left", "bytes are needed")
    assert open(tmp_path / "o" / RESULT).read() == before
    assert not [n for n in os.listdir(tmp_path / "o") if ".partial" in n]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 256 KiB filesystem, where this process may mount one (root on Linux); skipped elsewhere."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_a_real_full_disk_is_one_line_and_leaves_nothing(tmp_path, small_tmpfs, monkeypatch):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    args = cifar_args(tmp_path, ck, root)
    args[args.index("--cache") + 1] = str(small_tmpfs / "cache")
    one_line_error(run(args), "the feature cache needs about")  # 12 x 11,616 float16 > 256 KiB: refused
    monkeypatch.setattr(fcache, "check_space", lambda folder, need: None)  # as if the disk filled meanwhile
    one_line_error(run(args), str(small_tmpfs / "cache"), "no space left on the device", "--cache")
    assert not [f for _, _, files in os.walk(small_tmpfs) for f in files]  # no partial file left


# --------------------------------------------------------------------------- --out, option ranges, workers


def read_only_folder(tmp_path) -> tuple[str, str, callable]:
    """A folder this process cannot write: a read-only tmpfs for root (who ignores modes), else mode 0555."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]).returncode != 0:
            pytest.skip("root, and no read-only tmpfs can be mounted here")
        return str(ro), "the filesystem is read-only", lambda: subprocess.run(["umount", str(ro)], check=True)
    ro.chmod(0o555)
    return str(ro), "permission denied", lambda: ro.chmod(0o755)


@pytest.mark.parametrize("where", ["file", "proc", "readonly"])
def test_out_that_cannot_be_created_is_one_line(tmp_path, where):
    if where == "proc" and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc on this system")
    (tmp_path / "plain").write_text("x")
    root, ck = make_tree(tmp_path / "tree", per_class=1), make_ckpt(tmp_path)
    undo = lambda: None  # noqa: E731
    if where == "file":
        out, expect = str(tmp_path / "plain" / "o"), "a file stands where a folder is needed"
    elif where == "proc":
        out, expect = "/proc/single-image-ssl-probe", "cannot be created here"
    else:
        folder, expect, undo = read_only_folder(tmp_path)
        out = os.path.join(folder, "o")
    try:
        r = run(["--checkpoint", ck, "--data-root", root, "--out", out, "--workers", "0", "--device", "cpu"])
    finally:
        undo()
    one_line_error(r, "--out", out, expect)


@pytest.mark.parametrize("option,value,expect", [
    ("--lr", "-1", "0<x<=10"), ("--lr", "nan", "0<x<=10"), ("--lr", "inf", "0<x<=10"),
    ("--momentum", "1", "0<=x<1"), ("--weight-decay", "-0.1", "0<=x<=1"), ("--batch-size", "1", "x>=2"),
    ("--epochs", "0", "x>=1"), ("--seed", "-1", "0<=x<=4294967295"), ("--workers", "-2", "x>=0"),
    ("--crop", "0", "x>=1"), ("--eval-every", "0", "x>=1"), ("--jobs", "0", "x>=1"),
])
def test_numeric_options_out_of_range_are_refused_by_the_parser(tmp_path, option, value, expect):
    r = run(["--checkpoint", "c", "--data-root", "d", "--out", str(tmp_path / "o"), option, value])
    assert r.exit_code == 2 and f"Invalid value for '{option}'" in r.output and expect in r.output, r.output


def test_crop_larger_than_resize_is_refused(tmp_path):
    root, ck = make_tree(tmp_path / "tree", splits=("train", "val"), per_class=1, size=40), make_ckpt(tmp_path)
    r = run(["--checkpoint", ck, "--dataset", "imagefolder", "--data-root", root, "--out", str(tmp_path / "o"),
             "--resize", "32", "--crop", "40", "--device", "cpu"])
    one_line_error(r, "--crop 40 is larger than --resize 32")


def test_workers_default_never_exceeds_the_usable_cpus(monkeypatch):
    want = min(2, len(os.sched_getaffinity(0)))
    assert ProbeConfig().workers == want
    r = CliRunner().invoke(main, ["--help"])
    assert f"[default: {want}; x>=0]" in " ".join(r.output.split())
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert available_cpus() == 1


@pytest.mark.slow  # a real process, killed with SIGKILL while it writes the cache (~15 s)
def test_sigkill_during_the_cache_write_is_survived(tmp_path):
    import signal
    import time

    root, ck = make_tree(tmp_path / "tree", per_class=60), make_ckpt(tmp_path)
    args = cifar_args(tmp_path, ck, root, "killed") + ["--feature-batch-size", "4", "--layers", "conv1,conv4"]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-m", "probe.linear", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    cache, deadline = tmp_path / "cache", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any(".partial-" in f for _, _, files in os.walk(cache) for f in files):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait() == -signal.SIGKILL, "the run ended before its cache write could be interrupted"
    r = run(cifar_args(tmp_path, ck, root, "again") + ["--layers", "conv1,conv4"])
    assert r.exit_code == 0, r.output
    clean = run(cifar_args(tmp_path, ck, root, "clean") + ["--layers", "conv1,conv4", "--cache",
                                                             str(tmp_path / "fresh")])  # the last --cache wins
    assert clean.exit_code == 0, clean.output
    assert json.load(open(tmp_path / "again" / RESULT))["top1"] == json.load(open(tmp_path / "clean" / RESULT))["top1"]
    assert not [f for _, _, files in os.walk(cache) for f in files if ".partial-" in f]


# --------------------------------------------------------------------------- issue 23 (field test)


def test_a_dangling_symlink_in_a_probe_folder_is_one_line(tmp_path):
    root, ck = make_tree(tmp_path / "tree", splits=("train", "val"), per_class=2, size=40), make_ckpt(tmp_path, "alexnet")
    link = os.path.join(root, "train", "c1", "gone.jpg")
    os.symlink(str(tmp_path / "nowhere.jpg"), link)
    args = ["--checkpoint", ck, "--dataset", "imagefolder", "--data-root", root, "--epochs", "1", "--workers", "0",
            "--batch-size", "4", "--resize", "36", "--crop", "32", "--layers", "conv1", "--device", "cpu",
            "--out", str(tmp_path / "a")]
    r = run(args)
    one_line_error(r, f"{link}: a symbolic link to a missing file ({tmp_path}/nowhere.jpg); remove the link "
                      f"or restore its target")
    assert not (tmp_path / "a" / RESULT).exists()


def style(*args):
    from probe.style import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_style_names_a_missing_input_and_refuses_an_elongated_image_up_front(tmp_path):
    from PIL import Image

    out = tmp_path / "fig.png"
    r = style("--checkpoint", tmp_path / "none", "--content", tmp_path / "missing.jpg", "--style", tmp_path / "s.png",
              "--out", out)
    one_line_error(r, f"--content {tmp_path}/missing.jpg: no such file; give an existing image file")
    Image.new("RGB", (20000, 20)).save(tmp_path / "long.png")
    r = style("--checkpoint", tmp_path / "none", "--content", tmp_path / "long.png", "--style", tmp_path / "long.png",
              "--out", out)
    one_line_error(r, f"--content {tmp_path}/long.png: 20000 x 20 pixels resized to a shorter side of 256 would be "
                      f"256000 x 256, more than 16,777,216 pixels; crop the image to a less elongated shape or "
                      f"lower --size")
    assert not out.exists()


def test_visualize_names_a_missing_image(tmp_path):
    from probe.pictures import read_image
    import click

    with pytest.raises(click.ClickException) as e:
        read_image(str(tmp_path / "gone.png"), "--image")
    assert e.value.message == f"--image {tmp_path}/gone.png: no such file; give an existing image file"


def test_table_says_where_it_writes_and_counts_one_epoch_in_the_singular(tmp_path, monkeypatch):
    res = fake_result(tmp_path, "r", "cifar10", [10.0, 20.0], epochs=1)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(table.main, [res])
    assert r.exit_code == 0, r.output
    assert f"wrote {tmp_path}/table.md (--out - only prints the table)" in r.output
    assert "1 epoch (" in r.output and "1 epochs" not in r.output
    assert (tmp_path / "table.md").read_text().strip() in r.output


def test_bench_refuses_to_write_docs_from_a_stand_in(tmp_path, monkeypatch):
    from tests.bench import render, run as bench

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Render (`augment render`)\n\nreal figures\n")
    monkeypatch.setattr(render, "run", lambda quick: f"## Render (`augment render`)\n\n{render.STAND_IN}: x\n")
    r = CliRunner().invoke(bench.main, ["--only", "render", "--out", str(doc)])
    one_line_error(r, f"{doc} left as it is: ## Render (`augment render`) measured a stand-in, not the paper's "
                      f"images (see STAND-IN INPUT above); set SOURCE_IMAGE_DIR to the folder holding them and run again")
    assert doc.read_text().endswith("real figures\n")


def test_bench_render_names_its_stand_in_and_removes_it(tmp_path, monkeypatch):
    from tests.bench import render

    monkeypatch.setattr(render, "IMAGE_A", str(tmp_path / "absent.jpg"))
    seen = []
    monkeypatch.setattr(render, "_section", lambda src, path, quick: seen.append(path) or "section")
    assert render.run(quick=True) == "section"
    assert seen[0].endswith("synthetic.png") and not os.path.exists(os.path.dirname(seen[0]))


def test_a_probe_on_a_checkpoint_without_its_encoder_is_one_line(tmp_path):
    from train.checkpoint import load_checkpoint, save_checkpoint

    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path, "alexnet")
    d = load_checkpoint(ck)
    del d["encoder_spec"]
    save_checkpoint(d, ck)
    r = run(cifar_args(tmp_path, ck, root, "o", "--dataset", "imagefolder"))
    one_line_error(r, f"{ck}: incomplete checkpoint (it lacks encoder_spec); restore it from a copy or train again")



# --------------------------------------------------------------------------- issue #23: second field test


def test_a_probe_into_a_training_runs_folder_is_refused(tmp_path):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    (run_dir / "log.jsonl").write_text('{"git": "x"}\n')
    r = run(cifar_args(tmp_path, ck, root, "run"))
    one_line_error(r, f"--out {run_dir} holds a training run (checkpoint.pt); a probe there would replace its "
                      f"log.jsonl; choose another --out, e.g. probes/run")
    assert (run_dir / "log.jsonl").read_text() == '{"git": "x"}\n'


def test_a_file_that_is_not_a_probe_result_is_one_line_in_table_and_figures(tmp_path):
    (tmp_path / "ck.pt").write_bytes(b"\x80\x02binary")
    for cmd, args in ((table.main, [str(tmp_path / "ck.pt"), "--out", "-"]),
                      (figures.cli, ["layers", str(tmp_path / "ck.pt"), "--out", str(tmp_path / "l.png")])):
        r = CliRunner().invoke(cmd, args)
        one_line_error(r, f"{tmp_path / 'ck.pt'}: not a readable probe result (UnicodeDecodeError)")


def test_a_figure_out_that_is_a_folder_or_an_unknown_format_is_one_line(tmp_path):
    ck = make_ckpt(tmp_path)
    (tmp_path / "dir").mkdir()
    r = CliRunner().invoke(figures.cli, ["filters", ck, "--out", str(tmp_path / "dir")])
    one_line_error(r, f"--out {tmp_path / 'dir'}: a folder; give a file name in it")
    r = CliRunner().invoke(figures.cli, ["filters", ck, "--out", str(tmp_path / "f.jpgx")])
    one_line_error(r, "unknown image format 'jpgx'; end the name with one of", ".png")
    assert sorted(os.listdir(tmp_path)) == ["ck.pt", "dir"]


def test_visualize_refuses_a_size_that_vanishes_before_the_layer(tmp_path):
    from probe.visualize import cli as visualize

    ck = make_ckpt(tmp_path, arch="alexnet")
    r = CliRunner().invoke(visualize, ["maximize", "--checkpoint", ck, "--layer", "conv5", "--units", "0",
                                       "--size", "16", "--steps", "1", "--device", "cpu",
                                       "--out", str(tmp_path / "u.png")])
    one_line_error(r, "--size 16: too small for conv5 of this alexnet encoder", "raise --size (its training "
                      "input is 224)")
    assert not (tmp_path / "u.png").exists()


def test_ctrl_c_on_a_probe_is_one_line_and_leaves_no_folder_of_its_making(tmp_path, monkeypatch):
    import probe.linear as linear

    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    real = linear.run_cifar

    def interrupted(cfg, *a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(linear, "run_cifar", interrupted)
    r = CliRunner().invoke(main, cifar_args(tmp_path, ck, root, "o"))
    assert r.exit_code == 130 and r.output.strip() == (
        f"Error: interrupted before {tmp_path / 'o'}/probe.json was written; the features already cached are kept, "
        f"and the same command starts again from them")
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr(linear, "run_cifar", real)
    assert run(cifar_args(tmp_path, ck, root, "o")).exit_code == 0
