"""Fault injection for the trainers (issue 13): every class gets one line, a non-zero exit, no traceback,
and nothing already written is lost. The loop's own classes (lock, --out, resume changes, NaN) are in
tests/test_loop.py; the augment and probe sides in tests/test_faults_augment.py, tests/test_faults_probe.py."""
import errno
import json
import os
import signal
import sys
import tarfile

import click

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


def save_failing_midway(error):
    """A ``torch.save`` that, writing a checkpoint's temporary file, writes 100 bytes of it and raises
    ``error(path)``, as on a disk that fills up; every other save is torch's own."""
    real = torch.save

    def save(obj, f, *a, **k):
        if isinstance(f, str) and ".partial-" in f:
            with open(f, "wb") as fh:
                fh.write(b"\0" * 100)
            raise error(f)
        return real(obj, f, *a, **k)
    return save


@pytest.fixture
def toy(tmp_path):
    return make_toy_set(str(tmp_path / "toy"), count=32, size=32, per_shard=16, fmt="jpg")


def test_full_disk_while_checkpointing_keeps_the_last_good_one(toy, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert rot("--shards", toy, "--out", out, *FAST, "--max-steps", 2).exit_code == 0
    before = (out / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(torch, "save", save_failing_midway(lambda f: OSError(errno.ENOSPC, "No space left on device",
                                                                             f)))
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


# --------------------------------------------------------------------------- issue 23 (field test)

from tests import toymethod  # noqa: E402

TOY = ["--device", "cpu", "--workers", "0", "--log-every", "1"]


def toy_run(*args):
    return CliRunner().invoke(toymethod.cli, [str(a) for a in (*TOY, *args)])


def log_lines(out):
    return (out / "log.jsonl").read_text().splitlines()


def error_line(r) -> str:
    assert one_line(r), r.output
    return next(ln for ln in r.output.splitlines() if ln.startswith("Error:"))


def _worker(lock_path: str, report_w: int, go_w: int) -> None:
    from train.loader import worker

    worker.detach_worker()
    fds = []
    for n in os.listdir("/proc/self/fd"):
        try:
            fds.append(os.readlink(f"/proc/self/fd/{n}"))
        except OSError:
            pass
    os.write(report_w, b"1" if lock_path not in fds else b"0")
    os.write(go_w, b"1")
    signal.pause()                                # until PR_SET_PDEATHSIG kills it


def _trainer(lock_path: str, report_w: int, alive_w: int) -> None:
    from train.loader import worker

    worker.mark_trainer()
    go_r, go_w = os.pipe()
    if os.fork() == 0:
        try:
            _worker(lock_path, report_w, go_w)
        finally:
            os._exit(0)
    os.close(alive_w)
    os.read(go_r, 1)                              # the worker has detached and reported
    os.kill(os.getpid(), signal.SIGKILL)          # the trainer is killed, as by `kill -9`


def test_a_worker_closes_its_copy_of_the_lock_and_dies_with_its_parent(tmp_path):
    """A forked DataLoader worker (detach_worker) keeps no fd of the folder lock and is killed with its
    trainer, so the lock ends with the trainer. Synchronised by pipes, no sleeps."""
    import select
    from augment.lock import folder_lock

    with folder_lock(str(tmp_path / "run" / ".train"), "test") as lock:
        report_r, report_w = os.pipe()
        alive_r, alive_w = os.pipe()
        middle = os.fork()
        if middle == 0:
            try:
                _trainer(lock.path, report_w, alive_w)
            finally:
                os._exit(0)
        os.close(alive_w)
        os.close(report_w)
        os.waitpid(middle, 0)
        assert os.read(report_r, 1) == b"1"       # the worker held no fd of the lock file
        # EOF on a pipe only the worker still holds: the worker died with its parent
        assert select.select([alive_r], [], [], 120)[0] and os.read(alive_r, 1) == b""


def test_ctrl_c_says_what_was_saved_and_the_command_that_resumes(tmp_path, monkeypatch):
    from train.run import Run

    out = tmp_path / "run"
    assert toy_run("--out", out, "--max-steps", 8).exit_code == 0
    args = [*TOY, "--out", str(out), "--max-steps", "16", "--resume"]
    monkeypatch.setattr(sys, "argv", ["toymethod.py", *args])
    real = Run.finite

    def interrupted(self, stats):
        if self.step == 10:
            raise KeyboardInterrupt
        return real(self, stats)

    monkeypatch.setattr(Run, "finite", interrupted)
    before = (out / "checkpoint.pt").read_bytes()
    r = CliRunner().invoke(toymethod.cli, args)
    assert error_line(r) == (f"Error: interrupted at step 10; {out}/checkpoint.pt holds the run up to step 8, "
                             f"1 epoch complete; resume with: python -m tests.toymethod {' '.join(args)}")
    assert r.exit_code == 130 and (out / "checkpoint.pt").read_bytes() == before
    assert not (out / ".train" / "lock").exists()


def test_a_run_ends_saying_why_it_stopped_where_its_checkpoint_is_and_how_to_continue(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = [*TOY, "--out", str(out), "--max-steps", "3"]
    monkeypatch.setattr(sys, "argv", ["toymethod.py", *args])
    r = CliRunner().invoke(toymethod.cli, args)
    assert r.exit_code == 0
    assert (f"stopped at step 3: --max-steps 3 reached; checkpoint: {out}/checkpoint.pt; to continue: "
            f"python -m tests.toymethod {' '.join(args)} --resume") in r.output


def test_a_stop_at_step_run_says_the_command_that_goes_past_it(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = [*TOY, "--out", str(out), "--max-steps", "6", "--stop-at-step", "3"]
    monkeypatch.setattr(sys, "argv", ["toymethod.py", *args])
    r = CliRunner().invoke(toymethod.cli, args)
    assert r.exit_code == 0
    again = [*TOY, "--out", str(out), "--max-steps", "6"]   # --stop-at-step 3 again would stop at once
    assert (f"stopped at step 3: --stop-at-step 3 reached; checkpoint: {out}/checkpoint.pt; to continue: "
            f"python -m tests.toymethod {' '.join(again)} --resume") in r.output
    monkeypatch.setattr(sys, "argv", ["toymethod.py", *again, "--resume"])
    r = CliRunner().invoke(toymethod.cli, [*again, "--resume"])
    assert r.exit_code == 0 and "stopped at step 6: --max-steps 6 reached" in r.output


def test_under_torchrun_the_resume_command_is_the_launchers_own(tmp_path, monkeypatch):
    from train.loop import launcher_prefix, without_option
    assert launcher_prefix() == ["python"]          # not under a launcher
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setattr(sys, "argv", ["/somewhere/count.py", "--out", "x"])
    for parent, prefix in [
        (["/v/bin/python", "/v/bin/torchrun", "--nproc_per_node", "2", "-m", "train.rotnet", "--out", "x"],
         ["torchrun", "--nproc_per_node", "2"]),
        (["/v/bin/python", "-m", "train.launch", "--nproc_per_node=4", "-m", "train.dino", "-m"],
         ["python", "-m", "train.launch", "--nproc_per_node=4"]),
        (["/v/bin/python", "-m", "torch.distributed.run", "--nnodes", "1", "/somewhere/count.py", "--out", "x"],
         ["python", "-m", "torch.distributed.run", "--nnodes", "1"])]:
        (tmp_path / "cmdline").write_bytes(b"\0".join(a.encode() for a in parent) + b"\0")
        assert launcher_prefix(str(tmp_path / "cmdline")) == prefix
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert launcher_prefix(str(tmp_path / "missing")) == ["torchrun", "--nproc_per_node", "3"]
    assert without_option(["--a", "1", "--stop-at-step", "5", "--b", "--stop-at-step=7"], "--stop-at-step") == \
        ["--a", "1", "--b"]


def test_full_disk_in_torch_zip_writer_is_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    import shutil
    from train import checkpoint

    out = tmp_path / "run"
    assert toy_run("--out", out, "--max-steps", 4).exit_code == 0
    before = (out / "checkpoint.pt").read_bytes()
    # torch's zip writer reports a full disk as RuntimeError, not OSError
    monkeypatch.setattr(torch, "save", save_failing_midway(
        lambda f: RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")))
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 4096))
    r = toy_run("--out", out, "--max-steps", 8, "--resume")
    monkeypatch.undo()
    line = error_line(r)
    assert line.startswith(f"Error: {out}: no space left on the device, 4,096 bytes free; about ")
    assert line.endswith("bytes are needed; free some space or write elsewhere (the last good checkpoint.pt is kept)")
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not [n for n in os.listdir(out) if ".partial" in n]
    assert toy_run("--out", out, "--max-steps", 8, "--resume").exit_code == 0   # still resumable


def test_full_disk_while_logging_is_one_line_and_keeps_the_log_and_checkpoint(tmp_path, monkeypatch):
    from tests.faults import LimitedFile
    from train import run as run_mod

    out = tmp_path / "run"
    assert toy_run("--out", out, "--max-steps", 4).exit_code == 0
    log, ck = (out / "log.jsonl").read_text(), (out / "checkpoint.pt").read_bytes()

    def limited(path, mode="r", *a, **k):
        f = open(path, mode, *a, **k)
        return LimitedFile(f, room=0) if str(path).endswith("log.jsonl") and "a" in mode else f

    monkeypatch.setattr(run_mod, "open", limited, raising=False)
    r = toy_run("--out", out, "--max-steps", 8, "--resume")
    monkeypatch.undo()
    line = error_line(r)
    assert line.startswith(f"Error: {out}: no space left on the device") and "bytes are needed" in line
    assert line.endswith(f"(the log so far and {out}/checkpoint.pt are kept)")
    assert (out / "log.jsonl").read_text() == log and (out / "checkpoint.pt").read_bytes() == ck


def test_a_refused_resume_leaves_no_header_in_the_log(tmp_path):
    out = tmp_path / "run"
    assert toy_run("--out", out, "--max-steps", 4).exit_code == 0
    before = log_lines(out)
    r = toy_run("--out", out, "--max-steps", 8, "--resume", "--batch-size", 8)
    assert "--resume: the training inputs differ from the checkpoint's (batch-size 4 -> 8)" in error_line(r)
    assert log_lines(out) == before
    assert toy_run("--out", out, "--max-steps", 8, "--resume").exit_code == 0
    heads = [json.loads(ln) for ln in log_lines(out) if '"argv"' in ln]
    assert len(heads) == 2 and heads[1]["resume"] is True and heads[1]["config"]["batch_size"] == 4


@pytest.mark.parametrize("lacks", ["config", "state"])
def test_a_checkpoint_without_its_config_or_state_is_one_line(tmp_path, lacks):
    from train.checkpoint import save_checkpoint

    out = tmp_path / "run"
    assert toy_run("--out", out, "--max-steps", 4).exit_code == 0
    ck = load_checkpoint(str(out))
    del ck[lacks]
    save_checkpoint(ck, str(out / "checkpoint.pt"))
    r = toy_run("--out", out, "--max-steps", 8, "--resume")
    assert error_line(r).startswith(f"Error: {out}/checkpoint.pt: incomplete checkpoint (it lacks {lacks})")
    assert r.exit_code == 1


def test_a_checkpoint_without_its_payload_is_one_line(tmp_path):
    from train.checkpoint import CKPT_FORMAT

    path = tmp_path / "checkpoint.pt"
    torch.save({"format": CKPT_FORMAT, "version": 2, "sha256": "0"}, str(path))
    with pytest.raises(click.ClickException, match="incomplete checkpoint .it has the checkpoint marker but no payload"):
        load_checkpoint(str(path))


def test_resume_refuses_an_explicitly_changed_architecture(toy, tmp_path):
    out = tmp_path / "run"
    assert rot("--shards", toy, "--out", out, *FAST, "--max-steps", 2).exit_code == 0
    before = (out / "checkpoint.pt").read_bytes(), log_lines(out)
    fast = [a if a != "small" else "alexnet" for a in FAST]
    r = rot("--shards", toy, "--out", out, *fast, "--max-steps", 4, "--resume")
    assert error_line(r) == (f"Error: --resume: --arch alexnet (it was trained with small): the model cannot "
                             f"change in the middle of a run; drop the option or give --arch small to continue "
                             f"{out}/checkpoint.pt, or start a new run in another --out")
    assert ((out / "checkpoint.pt").read_bytes(), log_lines(out)) == before
    # not given: the checkpoint's architecture is kept
    rest = [a for a in FAST if a not in ("--arch", "small")]
    assert rot("--shards", toy, "--out", out, *rest, "--max-steps", 4, "--resume").exit_code == 0
    assert load_checkpoint(str(out))["config"]["arch"] == "small"


def test_nan_before_the_first_checkpoint_does_not_advise_resuming(tmp_path):
    out = tmp_path / "run"
    r = toy_run("--out", out, "--nan-at", 2)
    assert error_line(r) == (f"Error: loss is nan at epoch 0 step 1; no checkpoint was written, so there is "
                             f"nothing to resume. Check the data (`python -m augment verify`), then start again "
                             f"in a new --out (or after deleting {out}) with a lower learning rate (--lr) or "
                             f"another --seed")
    assert not (out / "checkpoint.pt").exists()


def test_a_symlink_loop_in_an_image_folder_counts_each_image_once(tmp_path):
    from train.loader.folder import open_splits

    cls = tmp_path / "data" / "train" / "a"
    cls.mkdir(parents=True)
    for i in range(10):
        Image.new("RGB", (8, 8)).save(cls / f"{i}.png")
    (cls / "loop").symlink_to("..")
    assert len(open_splits(str(tmp_path / "data"), "imagefolder", None, None).train) == 10


def test_an_eval_split_without_train_is_named(tmp_path):
    from train.loader.folder import open_splits

    (tmp_path / "data" / "test" / "a").mkdir(parents=True)
    with pytest.raises(click.ClickException) as e:
        open_splits(str(tmp_path / "data"), "imagefolder", None, None)
    assert e.value.message == (f"--data {tmp_path}/data: has test/ but no train/; expected "
                               f"{tmp_path}/data/train/<class>/<image> beside test/")


# --------------------------------------------------------------------------- issue #23: second field test


def test_a_data_folder_given_as_out_is_refused_and_a_refused_run_leaves_no_folder(toy, tmp_path):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    r = rot("--shards", toy, "--out", data, *FAST, "--max-steps", 1)
    assert error_line(r) == (f"Error: --out {data}: holds 1 other entry (e.g. cat) and no run; a trainer writes "
                             f"checkpoint.pt, log.jsonl and .train/ into --out: choose a new or empty folder")
    assert os.listdir(data) == ["cat"]
    r = rot("--shards", str(tmp_path / "nowhere"), "--out", tmp_path / "new", *FAST, "--max-steps", 1)
    assert one_line(r) and "no such folder" in r.output
    assert not (tmp_path / "new").exists()


def test_a_new_run_after_one_that_never_saved_keeps_the_old_log_apart(toy, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"git": "x", "config": {}}\n{"event": "non_finite"}\n')
    r = rot("--shards", toy, "--out", out, *FAST, "--max-steps", 1)
    assert r.exit_code == 0, r.output
    assert f"an earlier run's log, which never reached a checkpoint, is kept as {out}/log.jsonl.1" in r.output
    assert (out / "log.jsonl.1").read_text().endswith('{"event": "non_finite"}\n')
    assert sum("git" in json.loads(ln) for ln in open(out / "log.jsonl")) == 1


def test_only_a_classifier_trained_on_labels_is_a_teacher_or_scored_by_top1(toy, tmp_path):
    from probe.top1 import cli as top1
    from train import distill

    out = tmp_path / "rot"
    assert rot("--shards", toy, "--out", out, *FAST, "--max-steps", 1).exit_code == 0
    for d in ("train", "test"):
        for c in range(4):   # as many classes as RotNet's head has outputs: the widths fit, the meaning not
            (tmp_path / "data" / d / f"c{c}").mkdir(parents=True)
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "data" / d / f"c{c}" / "0.png")
    refusal = ("a 'rotnet' checkpoint, whose head predicts rotnet's own targets, not the data's classes; give a "
               "train.supervised (or train.distill) checkpoint")
    r = CliRunner().invoke(distill.cli, ["--shards", toy, "--teacher", str(out), "--eval-data", str(tmp_path / "data"),
                                         "--eval-dataset", "imagefolder", "--student-arch", "small", "--out",
                                         str(tmp_path / "kd"), "--device", "cpu", "--workers", "0", "--max-steps", "1"])
    assert error_line(r) == f"Error: --teacher {out}: {refusal}"
    r = CliRunner().invoke(top1, ["--checkpoint", str(out), "--data", str(tmp_path / "data"), "--device", "cpu",
                                  "--workers", "0", "--out", str(tmp_path / "t.json")])
    assert error_line(r) == f"Error: {out}/checkpoint.pt: {refusal}"


def test_a_supervised_run_started_from_another_methods_encoder_resumes(toy, tmp_path):
    gan = tmp_path / "gan"
    r = CliRunner().invoke(monogan.cli, ["--shards", toy, "--out", str(gan), "--device", "cpu", "--workers", "0",
                                         "--batch-size", "4", "--n-critic", "1", "--max-steps", "1"])
    assert r.exit_code == 0, r.output
    data = tmp_path / "data"
    for d in ("train", "test"):
        for c in range(2):
            (data / d / f"c{c}").mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((32, 32, 3), 60 * c + i, np.uint8)).save(data / d / f"c{c}" / f"{i}.png")
    base = ["--data", str(data), "--arch", "small", "--out", str(tmp_path / "sup"), "--device", "cpu",
            "--workers", "0", "--batch-size", "4"]
    sup = lambda *a: CliRunner().invoke(supervised.cli, [*base, *map(str, a)])  # noqa: E731
    assert sup("--init-from", gan, "--max-steps", 2).exit_code == 0
    r = sup("--max-steps", 4, "--resume")         # --init-from left out: the run's own start is kept
    assert r.exit_code == 0, r.output
    assert load_checkpoint(str(tmp_path / "sup"))["step"] == 4
    r = sup("--max-steps", 6, "--resume", "--init-from", tmp_path / "other")
    assert one_line(r) and f"--init-from {tmp_path / 'other'} (it was trained with {gan})" in r.output


def test_a_bad_out_of_train_random_is_one_line(tmp_path):
    from train import random as rnd

    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        r = CliRunner().invoke(rnd.cli, ["--arch", "small", "--out", str(out)])
        assert error_line(r).startswith(f"Error: --out {out}: cannot create the folder (")


def test_a_gan_whose_samples_folder_is_a_file_stops_in_one_line(toy, tmp_path):
    out = tmp_path / "gan"
    out.mkdir()
    (out / "samples").write_text("x")
    r = CliRunner().invoke(monogan.cli, ["--shards", toy, "--out", str(out), "--device", "cpu", "--workers", "0",
                                         "--batch-size", "4", "--n-critic", "1", "--max-steps", "2"])
    line = error_line(r)
    assert line.startswith(f"Error: sample sheet: {out}/samples/step") and "run again" in line
