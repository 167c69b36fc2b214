"""The one loop, tested once with a toy method: exact resume after SIGKILL, --max-steps, the time budget,
the NaN stop, DDP with two gloo processes, and the method interface's hooks."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import torch
import pytest
from click.testing import CliRunner

from tests import toymethod
from train.checkpoint import load_checkpoint
from train.loader.memory import MemoryLoader
from train.loop import Meter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--device", "cpu", "--workers", "0", "--log-every", "1"]


def invoke(*args):
    return CliRunner().invoke(toymethod.cli, [str(a) for a in (*BASE, *args)])


def logs(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def same_weights(a, b) -> bool:
    return all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"]) and all(
        torch.equal(x, y) for x, y in zip(a["state"]["optimizer"]["state"][0].values(),
                                          b["state"]["optimizer"]["state"][0].values()))


def test_memory_loader_resumes_an_epoch_exactly():
    images = torch.arange(40, dtype=torch.uint8).view(10, 1, 2, 2).repeat(1, 1, 1, 1)
    ld = MemoryLoader(images, 3, seed=5)
    full = [i.tolist() for _, i in ld.epoch(2)]
    assert len(full) == 3 and [i.tolist() for _, i in ld.epoch(2, skip=1)] == full[1:]
    assert full != [i.tolist() for _, i in ld.epoch(3)]


def test_meter_means_by_steps_or_samples():
    m = Meter()
    m.add({"loss": 1.0}, n=1)
    m.add({"loss": 4.0}, n=3)
    assert m.means() == {"loss": 3.25}


def test_max_steps_stop_then_resume_equals_one_run(tmp_path):
    assert invoke("--out", tmp_path / "a", "--max-steps", 11).exit_code == 0
    ck = load_checkpoint(str(tmp_path / "a"))
    assert (ck["epoch"], ck["step"], ck["extra"]["batches_done"]) == (1, 11, 3)
    r = invoke("--out", tmp_path / "a", "--resume")
    assert r.exit_code == 0, r.output
    assert invoke("--out", tmp_path / "b").exit_code == 0
    a, b = load_checkpoint(str(tmp_path / "a")), load_checkpoint(str(tmp_path / "b"))
    assert a["step"] == b["step"] == 16 and a["epoch"] == b["epoch"] == 2 and same_weights(a, b)
    # the hooks ran once per epoch begun, and the extra state went through the checkpoint
    assert a["extra"]["epochs_begun"] == 1 and b["extra"]["epochs_begun"] == 2


PARK = "import sys; from tests.toymethod import cli; cli(sys.argv[1:])"


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    killed, marker = str(tmp_path / "killed"), str(tmp_path / "parked")
    args = ["--out", killed, *BASE, "--epochs", "3"]
    env = dict(os.environ, TOY_PARK_AT="14", TOY_PARK_MARKER=marker, PYTHONPATH=ROOT,
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen([sys.executable, "-c", PARK, *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not os.path.exists(marker):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the run never reached step 14"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert load_checkpoint(killed)["step"] == 8           # the end-of-epoch-1 checkpoint survived the kill
    r = invoke("--out", killed, "--epochs", 3, "--resume")
    assert r.exit_code == 0, r.output
    assert invoke("--out", tmp_path / "straight", "--epochs", 3).exit_code == 0
    a, b = load_checkpoint(killed), load_checkpoint(str(tmp_path / "straight"))
    assert a["step"] == b["step"] == 24 and same_weights(a, b)


def test_sigterm_stops_a_run_as_ctrl_c_does_and_it_resumes(tmp_path):
    # what a cluster's scheduler sends before its kill: one line, exit 143, the checkpoint kept
    out, marker = str(tmp_path / "run"), str(tmp_path / "parked")
    args = ["--out", out, *BASE, "--epochs", "3"]
    env = dict(os.environ, TOY_PARK_AT="14", TOY_PARK_MARKER=marker, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-c", PARK, *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not os.path.exists(marker):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.time() < deadline, "the run never reached step 14"
            time.sleep(0.1)
        proc.terminate()
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("Error")]
    assert lines == [f"Error: stopped by SIGTERM at step 13; {out}/checkpoint.pt holds the run up to step 8, "
                     f"1 epoch complete; resume with: python -m tests.toymethod {' '.join(args)} --resume"]
    r = invoke("--out", out, "--epochs", 3, "--resume")
    assert r.exit_code == 0 and load_checkpoint(out)["step"] == 24


def test_time_budget_stops_with_a_checkpoint_and_sums_over_resumes(tmp_path):
    out = tmp_path / "run"
    r = invoke("--out", out, "--epochs", 50, "--sleep", 0.05, "--time-budget", 0.3)
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(str(out))
    assert 0 < ck["step"] < 50 * 8 and ck["extra"]["time_budget_reached"] and ck["train_seconds"] >= 0.3
    assert logs(out)[-1]["event"] == "time_budget"
    # a resume with the budget already spent trains no further step
    assert invoke("--out", out, "--epochs", 50, "--sleep", 0.05, "--time-budget", 0.3, "--resume").exit_code == 0
    assert load_checkpoint(str(out))["step"] == ck["step"]


def test_nan_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert invoke("--out", out, "--max-steps", 9).exit_code == 0
    before = (out / "checkpoint.pt").read_bytes()
    r = invoke("--out", out, "--resume", "--nan-at", 11)
    assert r.exit_code == 1 and "loss is nan at epoch 1 step 10" in r.output and "Traceback" not in r.output
    assert [ln for ln in r.output.splitlines() if ln.startswith("Error:")] == [r.output.strip().splitlines()[-1]]
    assert (out / "checkpoint.pt").read_bytes() == before and logs(out)[-1]["event"] == "non_finite"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_ranks_step_together(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "tests.toymethod", "--out", str(out), *BASE,
           "--count", "36", "--time-budget", "60"]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    ck = load_checkpoint(str(out))
    assert ck["step"] == 2 * (36 // (2 * 4)) and ck["epoch"] == 2     # each rank 4 batches per epoch
    head = logs(out)[0]
    assert head["world_size"] == 2
    assert [r["step"] for r in logs(out) if r.get("event") == "train"] == list(range(1, 9))


def test_resume_refuses_changed_inputs_unless_allowed(tmp_path):
    out = tmp_path / "run"
    assert invoke("--out", out, "--max-steps", 3).exit_code == 0
    r = invoke("--out", out, "--resume", "--batch-size", 2, "--seed", 9)
    assert r.exit_code == 1 and "batch-size 4 -> 2" in r.output and "seed 0 -> 9" in r.output
    assert "--allow-changed-inputs" in r.output and load_checkpoint(str(out))["step"] == 3
    r = invoke("--out", out, "--resume", "--batch-size", 2, "--allow-changed-inputs", "--max-steps", 4)
    assert r.exit_code == 0, r.output
    rec = [x for x in logs(out) if x.get("event") == "changed_on_resume"]
    assert rec and rec[0]["applied"]["batch_size"] == [4, 2]


def test_resume_applies_a_new_lr_and_refuses_what_it_cannot_apply(tmp_path):
    out = tmp_path / "run"
    assert invoke("--out", out, "--max-steps", 3).exit_code == 0
    r = invoke("--out", out, "--resume", "--count", 40)
    assert r.exit_code == 1 and "--count 32 -> 40 cannot change" in r.output
    r = invoke("--out", out, "--resume", "--lr", 0.001, "--max-steps", 5)
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(str(out))
    assert ck["state"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)
    assert [x["lr"] for x in logs(out) if x.get("event") == "train"][-1] == pytest.approx(0.001)
    # the run-length change is recorded beside the lr's (docs/training.md: every applied change is logged)
    assert [x for x in logs(out) if x.get("event") == "changed_on_resume"][0]["applied"] == \
        {"lr": [0.005, 0.001], "max_steps": [3, 5]}


def test_two_trainers_cannot_share_an_out_folder(tmp_path):
    from augment.lock import folder_lock

    out = tmp_path / "run"
    with folder_lock(str(out / ".train"), f"train into {out}"):
        r = invoke("--out", out, "--max-steps", 1)
    assert r.exit_code == 1 and "in use by process" in r.output and not (out / "checkpoint.pt").exists()
    (out / "checkpoint.pt.partial-999999").write_bytes(b"left by a killed run")
    assert invoke("--out", out, "--max-steps", 1).exit_code == 0
    assert not (out / "checkpoint.pt.partial-999999").exists()


def test_an_out_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    r = invoke("--out", tmp_path / "file" / "run", "--max-steps", 1)
    assert r.exit_code == 1 and "cannot create the folder" in r.output and "Traceback" not in r.output


def test_the_new_method_example_in_the_docs_runs(tmp_path):
    import re

    from tests.toyset import make_toy_set

    with open(os.path.join(ROOT, "docs", "training.md")) as f:
        code = re.search(r"```python\n(.*?)```", f.read(), re.S).group(1)
    prelude = ("from dataclasses import dataclass\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n"
               "from train.config import CommonConfig, command, option\nfrom train.loader import make_loader, prepare\n"
               "from train.loop import Method, echo_stats, fit\nfrom train.models import Encoder, EncoderSpec\n")
    scope: dict = {}
    exec(compile(prelude + code, "docs/training.md", "exec"), scope)
    toy = make_toy_set(str(tmp_path / "toy"), count=16, size=32, per_shard=8)
    r = CliRunner().invoke(scope["cli"], ["--shards", toy, "--out", str(tmp_path / "run"), *BASE, "--batch-size", "4",
                                          "--max-steps", "3"])
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(str(tmp_path / "run"))
    assert ck["method"] == "colour" and ck["step"] == 3 and ck["encoder_spec"]["arch"] == "small"
