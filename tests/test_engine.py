"""The shared loop: atomic checkpoints, kill + resume, architecture from the checkpoint, NaN stop, logs."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from tests.toyset import make_toy_set
import click

from train import rotnet
from train.checkpoint import load_checkpoint, save_checkpoint
from train.run import git_revision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--arch", "small", "--crop", "28", "--batch-size", "4", "--workers", "0", "--device", "cpu",
        "--eval-batches", "0"]


def invoke(*args):
    return CliRunner().invoke(rotnet.cli, [str(a) for a in args])


def logs(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_crash_during_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint({"format": "single-image-ssl/checkpoint", "v": 1}, path)
    real_save = torch.save

    def torn(obj, f):
        if not isinstance(f, str):
            return real_save(obj, f)        # the in-memory payload
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(click.ClickException, match="no space left"):
        save_checkpoint({"format": "single-image-ssl/checkpoint", "v": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["v"] == 1 and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_damaged_checkpoint_bytes_are_detected(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint({"format": "single-image-ssl/checkpoint", "w": torch.arange(1000.0)}, path)
    outer = torch.load(path, weights_only=False)
    payload = bytearray(outer["payload"])
    payload[len(payload) // 2] ^= 0x10
    torch.save(outer | {"payload": bytes(payload)}, path)
    with pytest.raises(click.ClickException, match="damaged"):
        load_checkpoint(path)


# Runs rotnet in a subprocess that parks (sleeps) when it reaches a given training batch, after
# writing a marker: the test then SIGKILLs it there, mid-epoch, after its first checkpoint.
PARK = """
import os, sys, time
import train.rotnet as r
n, park_at, marker = 0, int(os.environ["PARK_AT"]), os.environ["PARK_MARKER"]
orig = r.prepare
def prepare(*a, **k):
    global n
    n += 1
    if n == park_at:
        open(marker, "w").close()
        time.sleep(600)
    return orig(*a, **k)
r.prepare = prepare
r.cli(sys.argv[1:])
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, workers):
    # With DataLoader workers: the trainer alone is killed (not its group) and resumed at once, with no
    # wait; its workers must neither hold the run's lock nor outlive it (issue 23).
    shards = make_toy_set(str(tmp_path / "toy"), count=32, size=32, per_shard=8)
    fast = [*FAST[:FAST.index("--workers") + 1], str(workers), *FAST[FAST.index("--workers") + 2:]]
    args = ["--shards", shards, *fast, "--epochs", "2", "--batch-size", "8"]   # 4 batches per epoch
    killed, marker = str(tmp_path / "killed"), str(tmp_path / "parked")
    # Bit-identical only at equal thread counts (CPU reductions split by thread): match this process's.
    env = dict(os.environ, PARK_AT="7", PARK_MARKER=marker, PYTHONPATH=ROOT,
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen([sys.executable, "-c", PARK, "--out", killed, *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not os.path.exists(marker):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the run never reached batch 7"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    mid = load_checkpoint(killed)
    assert (mid["epoch"], mid["step"]) == (1, 4)      # the end-of-epoch-0 checkpoint survived the kill
    r = invoke("--out", killed, "--resume", *args)    # at once: the lock is not held by an orphan
    assert r.exit_code == 0, r.output
    assert [e["from_step"] for e in logs(killed) if e.get("event") == "resumed"] == [4]
    assert not orphans_of(killed, within=60)          # the killed trainer's workers died with it
    r = invoke("--out", tmp_path / "straight", *args)
    assert r.exit_code == 0, r.output
    a, b = load_checkpoint(killed), load_checkpoint(str(tmp_path / "straight"))
    assert a["step"] == b["step"] == 8 and a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])
    assert all(torch.equal(x, y) for x, y in zip(a["state"]["optimizer"]["state"][0].values(),
                                                 b["state"]["optimizer"]["state"][0].values()))


def orphans_of(out: str, within: float) -> list[int]:
    """PIDs of processes still running the trainer command that wrote ``out`` (its forked workers carry
    its command line), after waiting up to ``within`` s for them to go (a bound on a hang, not a timing)."""
    deadline = time.monotonic() + within
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if out.encode() in f.read():
                        with open(f"/proc/{pid}/stat") as st:
                            if st.read().rsplit(")", 1)[1].split()[0] != "Z":
                                found.append(int(pid))
            except OSError:
                pass
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_checkpoint_architecture_wins_on_resume(toy_set, tmp_path):
    out = tmp_path / "run"
    assert invoke("--shards", toy_set, "--out", out, *FAST, "--max-steps", 1).exit_code == 0
    base = ["--shards", toy_set, "--out", out, "--batch-size", "4", "--workers", "0", "--device", "cpu",
            "--eval-batches", "0", "--max-steps", "2", "--resume"]
    # Another architecture asked for explicitly is refused (issue 23), naming each option.
    r = invoke(*base, "--arch", "alexnet", "--crop", "64")
    assert r.exit_code == 1 and "--arch alexnet (it was trained with small), --crop 64 (it was trained with 28)" \
        in r.output and "give --arch small --crop 28" in r.output
    # Left at their defaults, the model options are the checkpoint's.
    r = invoke(*base)
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(str(out))
    assert ck["encoder_spec"]["arch"] == "small" and ck["config"]["crop"] == 28 and ck["step"] == 2
    headers = [l for l in logs(out) if "git" in l]
    assert len(headers) == 2 and headers[1]["arch_from_checkpoint"] == {"arch": "small", "crop": 28}


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(toy_set, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert invoke("--shards", toy_set, "--out", out, *FAST, "--max-steps", 2).exit_code == 0
    before = (out / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(rotnet, "prepare", lambda images, device: torch.full(images.shape, float("nan")))
    r = invoke("--shards", toy_set, "--out", out, *FAST, "--max-steps", 4, "--resume")
    assert r.exit_code != 0 and "loss is nan at epoch 0 step 2" in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in r.output and len(errors) == 1 and "--resume" in errors[0]
    assert (out / "checkpoint.pt").read_bytes() == before
    assert logs(out)[-1]["event"] == "non_finite"


def test_resume_without_checkpoint_and_existing_run(toy_set, tmp_path):
    r = invoke("--shards", toy_set, "--out", tmp_path / "none", *FAST, "--resume")
    assert r.exit_code != 0 and "--resume: no checkpoint" in r.output
    assert invoke("--shards", toy_set, "--out", tmp_path / "a", *FAST, "--max-steps", 1).exit_code == 0
    r = invoke("--shards", toy_set, "--out", tmp_path / "a", *FAST, "--max-steps", 1)
    assert r.exit_code != 0 and "already holds a run" in r.output


@pytest.mark.parametrize("device,message", [("tpu9", "unknown device"), ("meta", "unsupported device")]
                         + ([] if torch.cuda.is_available() else [("cuda", "no CUDA device")]))
def test_bad_device(toy_set, tmp_path, device, message):
    r = invoke("--shards", toy_set, "--out", tmp_path / "run", *FAST[:-4], "--device", device)
    assert r.exit_code != 0 and message in r.output


def test_log_header_then_json_lines(toy_set, tmp_path):
    out = tmp_path / "run"
    assert invoke("--shards", toy_set, "--out", out, *FAST, "--max-steps", 2).exit_code == 0
    with open(out / "log.jsonl") as f:
        raw = f.read().splitlines()
    head = json.loads(raw[0])
    assert list(head)[:2] == ["git", "config"] and head["git"] == git_revision()
    assert list(head["config"]) == sorted(head["config"]) and head["config"]["max_steps"] == 2
    assert {"torch", "torchvision", "numpy"} <= set(head["versions"])
    rest = [json.loads(line) for line in raw[1:]]
    assert rest and all({"epoch", "step", "elapsed_s", "event"} <= set(r) for r in rest)


def test_load_checkpoint_rejects_other_files(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"weights": 1}, p)
    with pytest.raises(Exception, match="not a checkpoint of this project"):
        load_checkpoint(str(p))
    p.write_bytes(b"garbage")
    with pytest.raises(Exception, match="not a readable checkpoint"):
        load_checkpoint(str(p))


def test_version_1_checkpoints_without_a_digest_still_load(tmp_path):
    from probe.backbone import load_backbone
    from train.models import Encoder, EncoderSpec

    enc = Encoder(EncoderSpec(arch="small"))
    old = {"format": "single-image-ssl/checkpoint", "version": 1, "method": "random", "config": {},
           "encoder_spec": enc.spec.to_dict(), "encoder": enc.state_dict(), "state": {}, "epoch": 0, "step": 0}
    torch.save(old, tmp_path / "checkpoint.pt")
    assert load_checkpoint(str(tmp_path))["version"] == 1
    assert load_backbone(str(tmp_path)).encoder.spec.arch == "small"
