"""RotNet: rotations, a few steps through the CLI, learning on a tiny set, bad input, exact resume."""
import json

import pytest
import torch
from click.testing import CliRunner

from tests.toyset import make_toy_set
from train import rotnet
from train.checkpoint import load_checkpoint

FAST = ["--arch", "small", "--crop", "28", "--batch-size", "4", "--workers", "0", "--device", "cpu",
        "--eval-batches", "1"]


def invoke(*args):
    return CliRunner().invoke(rotnet.cli, [str(a) for a in args])


def logs(out):
    with open(out / "log.jsonl") as f:
        return [json.loads(line) for line in f]


def test_rotations_are_the_four_rotations():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    x4, y = rotnet.rotations(x)
    assert x4.shape == (8, 1, 3, 3) and y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for k in range(4):
        assert torch.equal(torch.rot90(x4[2 * k:2 * k + 2], -k, (2, 3)), x)
    assert not torch.equal(x4[2], x4[0])


def test_cli_few_steps_writes_probe_checkpoint(toy_set, tmp_path):
    out = tmp_path / "run"
    r = invoke("--shards", toy_set, "--out", out, "--max-steps", 2, *FAST)
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(str(out))
    assert ck["method"] == "rotnet" and ck["step"] == 2 and ck["encoder_spec"]["arch"] == "small"
    assert ck["extra"]["batches_done"] == 2 and ck["epoch"] == 0
    assert ck["config"]["crop"] == 28 and set(ck["state"]) == {"model", "optimizer"}
    lines = logs(out)
    assert lines[0]["config"]["lr"] == 0.01 and "git" in lines[0]
    assert [l["step"] for l in lines[1:] if l.get("event") == "train"] == [2]   # the stop is always logged


def test_alexnet_path_on_a_64_pixel_set(tmp_path):
    d = make_toy_set(str(tmp_path / "s64"), count=8, size=64, per_shard=8)
    r = invoke("--shards", d, "--out", tmp_path / "run", "--crop", "64", "--batch-size", "2", "--workers", "0",
               "--device", "cpu", "--max-steps", "1", "--eval-batches", "0")
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(str(tmp_path / "run"))
    assert ck["encoder_spec"]["arch"] == "alexnet" and ck["encoder"]["blocks.conv5.0.weight"].shape[0] == 256


def test_a_few_steps_reduce_the_loss(toy_set, tmp_path):
    cfg = rotnet.Config(shards=toy_set, out=str(tmp_path / "run"), arch="small", crop=28, batch_size=8,
                        workers=0, device="cpu", lr=0.01, epochs=3, max_steps=24, log_every=1, eval_batches=0)
    rotnet.main(cfg)
    losses = [l["loss"] for l in logs(tmp_path / "run") if l.get("event") == "train"]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4


@pytest.mark.parametrize("args,message", [
    (["--arch", "alexnet"], "--size 256"),
    (["--arch", "small", "--crop", "40"], "smaller than --crop 40"),
    (["--arch", "alexnet", "--crop", "28"], "at least 63"),
    (["--arch", "small", "--milestones", "a,b"], "comma-separated"),
])
def test_bad_input_is_one_clear_line(toy_set, tmp_path, args, message):
    r = invoke("--shards", toy_set, "--out", tmp_path / "run", "--workers", "0", "--device", "cpu",
               "--batch-size", "4", *args)
    assert r.exit_code != 0 and message in r.output
    assert "Traceback" not in r.output


def test_not_a_shard_set(tmp_path):
    r = invoke("--shards", tmp_path, "--out", tmp_path / "run", *FAST)
    assert r.exit_code != 0 and "not a shard set" in r.output


def test_stop_and_resume_mid_epoch_equals_one_run(toy_set, tmp_path):
    common = ["--shards", toy_set, *FAST, "--eval-batches", "0"]
    assert invoke("--out", tmp_path / "once", "--max-steps", 6, *common).exit_code == 0
    # the schedules are planned over --max-steps: the first job stops at step 3 of the same 6-step plan
    assert invoke("--out", tmp_path / "twice", "--max-steps", 6, "--stop-at-step", 3, *common).exit_code == 0
    r = invoke("--out", tmp_path / "twice", "--max-steps", 6, "--resume", *common)
    assert r.exit_code == 0, r.output
    a, b = load_checkpoint(str(tmp_path / "once")), load_checkpoint(str(tmp_path / "twice"))
    assert a["step"] == b["step"] == 6 and b["extra"]["batches_done"] == 6
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])
    resumed = [l for l in logs(tmp_path / "twice") if l.get("event") == "resumed"]
    assert resumed[0]["from_step"] == 3


def test_time_budget_stops_with_a_checkpoint_and_carries_over_resume(toy_set, tmp_path):
    out = tmp_path / "run"
    r = invoke("--shards", toy_set, "--out", out, "--epochs", 50, "--time-budget", 0.001, *FAST)
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(str(out))
    # the budget is checked after each step: a tiny budget allows exactly one, then a checkpoint
    assert ck["step"] == 1 and ck["epoch"] == 0 and 0 < ck["train_seconds"]
    # spent seconds are carried by the checkpoint: a resume with the same budget trains no further
    r = invoke("--shards", toy_set, "--out", out, "--epochs", 50, "--time-budget", 0.001, "--resume", *FAST)
    assert r.exit_code == 0, r.output
    assert load_checkpoint(str(out))["step"] == 1
