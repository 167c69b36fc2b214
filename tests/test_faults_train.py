"""Fault injection for the trainers (issue 13): every class gets one line, a non-zero exit, no traceback,
and nothing already written is lost. The loop's own classes (lock, --out, resume changes, NaN) are in
tests/test_loop.py; the augment and probe sides in tests/test_faults_augment.py, tests/test_faults_probe.py."""
import errno
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.toyset import make_toy_set
from train import monogan, rotnet, supervised
from train.checkpoint import load_checkpoint

FAST = ["--arch", "small", "--crop", "28", "--batch-size", "4", "--workers", "0", "--device", "cpu",
        "--eval-batches", "0"]


def rot(*args):
    return CliRunner().invoke(rotnet.cli, [str(a) for a in args])


def one_line(r) -> bool:
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    return r.exit_code != 0 and "Traceback" not in r.output and len(errors) == 1


@pytest.fixture
def toy(tmp_path):
    return make_toy_set(str(tmp_path / "toy"), count=32, size=32, per_shard=16, fmt="jpg")


def test_full_disk_while_checkpointing_keeps_the_last_good_one(toy, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert rot("--shards", toy, "--out", out, *FAST, "--max-steps", 2).exit_code == 0
    before = (out / "checkpoint.pt").read_bytes()
    real = torch.save

    def full(obj, f, *a, **k):
        if isinstance(f, str) and ".partial-" in f:
            with open(f, "wb") as fh:
                fh.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", f)
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    r = rot("--shards", toy, "--out", out, *FAST, "--max-steps", 4, "--resume")
    monkeypatch.undo()
    assert one_line(r) and "no space left" in r.output and "bytes are needed" in r.output
    assert str(out) in r.output and "last good checkpoint.pt is kept" in r.output
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not [n for n in os.listdir(out) if ".partial" in n]


def test_a_damaged_checkpoint_is_refused_by_resume_and_by_the_probes(toy, tmp_path):
    from probe.backbone import load_backbone

    out = tmp_path / "run"
    assert rot("--shards", toy, "--out", out, *FAST, "--max-steps", 2).exit_code == 0
    path = out / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    outer = torch.load(str(path), weights_only=False)
    i = bytes(data).find(outer["payload"][1000:1032])       # a byte inside the stored payload
    data[i + 5] ^= 0x01
    path.write_bytes(bytes(data))
    r = rot("--shards", toy, "--out", out, *FAST, "--max-steps", 4, "--resume")
    assert one_line(r) and "damaged" in r.output
    with pytest.raises(Exception, match="damaged"):
        load_backbone(str(out))


def test_a_shard_damaged_after_verification_stops_training_and_keeps_the_checkpoint(toy, tmp_path):
    out = tmp_path / "run"
    assert rot("--shards", toy, "--out", out, *FAST, "--max-steps", 2).exit_code == 0
    before = (out / "checkpoint.pt").read_bytes()
    shard = os.path.join(toy, "shard-000001.tar")
    with tarfile.open(shard) as t:
        m = t.getmembers()[4]
    with open(shard, "r+b") as f:                 # one bit inside a JPEG: it still decodes, to wrong pixels
        f.seek(m.offset_data + m.size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x08]))
    r = rot("--shards", toy, "--out", out, *FAST, "--epochs", 3, "--resume")
    assert one_line(r) and "shard-000001.tar: its sha256 differs" in r.output
    assert (out / "checkpoint.pt").read_bytes() == before
    r = rot("--shards", toy, "--out", out, *FAST, "--max-steps", 3, "--resume", "--no-verify-stream")
    assert r.exit_code == 0, r.output


def test_a_run_that_would_make_no_step_is_refused(tmp_path):
    toy = make_toy_set(str(tmp_path / "toy"), count=16, size=32, per_shard=16)
    r = CliRunner().invoke(monogan.cli, ["--shards", toy, "--out", str(tmp_path / "m"), "--batch-size", "8",
                                         "--epochs", "1", "--n-critic", "5", "--device", "cpu", "--workers", "0"])
    assert one_line(r) and "--n-critic 5" in r.output and "no generator step" in r.output
    assert not (tmp_path / "m").exists()


def test_a_missing_input_option_is_named(tmp_path):
    r = rot("--out", tmp_path / "r", *FAST)
    assert one_line(r) and "--shards is missing" in r.output
    r = CliRunner().invoke(supervised.cli, ["--out", str(tmp_path / "s")])
    assert one_line(r) and "--data is missing" in r.output


@pytest.fixture
def bad_folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        os.makedirs(tmp_path / "imf" / c)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(tmp_path / "imf" / c / f"{i}.jpg")
    (tmp_path / "imf" / "b" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    return tmp_path / "imf"


@pytest.mark.parametrize("workers", ["0", "1"])
def test_an_undecodable_image_is_named_or_skipped_and_counted(bad_folder, tmp_path, workers):
    args = ["--data", str(bad_folder), "--arch", "small", "--batch-size", "4", "--workers", workers,
            "--device", "cpu", "--epochs", "1"]
    r = CliRunner().invoke(supervised.cli, [*args, "--out", str(tmp_path / "stop")])
    assert one_line(r) and "3.jpg: cannot be decoded" in r.output and "--skip-bad-images" in r.output
    r = CliRunner().invoke(supervised.cli, [*args, "--out", str(tmp_path / "skip"), "--skip-bad-images"])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "skip" / "log.jsonl") as f:
        epoch = [x for x in map(json.loads, f) if x.get("event") == "epoch"][-1]
    assert epoch["bad_images_skipped"] >= 1 and load_checkpoint(str(tmp_path / "skip"))["epoch"] == 1
