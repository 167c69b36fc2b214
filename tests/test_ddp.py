"""DDP under torchrun: 2 CPU processes (gloo) run RotNet steps; both ranks see the same batch count."""
import json
import os
import socket
import subprocess
import sys

from tests.toyset import make_toy_set
from train.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each rank counts the training batches it receives and writes the count when it finishes.
COUNT = """
import json, os, sys
import train.loop as loop
import train.rotnet as r
seen = []
orig = loop.train_epoch
def counted(*a, **k):
    stats, done = orig(*a, **k)
    seen.append(done)
    return stats, done
loop.train_epoch = counted
try:
    r.cli(sys.argv[1:], standalone_mode=False)
finally:
    with open(os.path.join(os.environ["COUNTS"], f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(seen, f)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_ranks_train_in_step(tmp_path):
    # Uneven shards: the case where webdataset's own DDP epochs hang.
    shards = make_toy_set(str(tmp_path / "toy"), count=40, size=32, shard_counts=[25, 3, 12])
    script = tmp_path / "count.py"
    script.write_text(COUNT)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT, COUNTS=str(tmp_path), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), "--shards", shards, "--out", str(out),
           "--arch", "small", "--crop", "28", "--batch-size", "4", "--workers", "0", "--device", "cpu",
           "--epochs", "1", "--eval-batches", "1"]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    counts = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert counts[0] == counts[1] == [40 // (2 * 4)]
    ck = load_checkpoint(str(out))
    assert ck["step"] == 5 and ck["epoch"] == 1
    with open(out / "log.jsonl") as f:
        assert json.loads(f.readline())["world_size"] == 2


# Two gloo ranks, each with half of a fixed batch: SimCLR's loss on negatives gathered from both ranks, and
# BatchNorm over the global batch, against one process on the whole batch.
GLOBAL = """
import json, os, sys
import torch
import torch.distributed as dist
from train.distributed import gather, sync_batchnorm
from train.simclr import nt_xent

dist.init_process_group("gloo")
rank = dist.get_rank()
g = torch.Generator().manual_seed(0)
z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
x = torch.randn(8, 3, 4, 4, generator=g)
part = slice(4 * rank, 4 * rank + 4)
loss = nt_xent(z1[part].clone().requires_grad_(), z2[part], 0.5, rank)
mean = loss.detach().clone()
dist.all_reduce(mean)
torch.manual_seed(1)
bn = sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), torch.device("cpu")).train()
y = bn(x[part])
y.sum().backward()
out = {"loss_mean": mean.item() / 2, "bn_type": type(bn[0]).__name__, "y": y.tolist(),
       "running_mean": bn[0].running_mean.tolist(), "running_var": bn[0].running_var.tolist(),
       "gathered": gather(torch.tensor([[float(rank)]])).flatten().tolist()}
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
"""


def test_simclr_negatives_and_batchnorm_statistics_span_both_ranks(tmp_path):
    import torch

    from train.simclr import nt_xent

    script = tmp_path / "global.py"
    script.write_text(GLOBAL)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), str(tmp_path)]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    x = torch.randn(8, 3, 4, 4, generator=g)
    full = nt_xent(z1, z2, 0.5).item()
    assert ranks[0]["loss_mean"] == ranks[1]["loss_mean"] and abs(ranks[0]["loss_mean"] - full) < 1e-5
    assert ranks[0]["gathered"] == [0.0, 1.0]
    bn = torch.nn.BatchNorm2d(3).train()
    y = bn(x)
    assert ranks[0]["bn_type"] == "GlobalBatchNorm"
    for r in range(2):        # both ranks normalise with the whole batch's statistics and keep its running ones
        assert torch.allclose(torch.tensor(ranks[r]["y"]), y[4 * r:4 * r + 4].detach(), atol=1e-5)
        assert torch.allclose(torch.tensor(ranks[r]["running_mean"]), bn.running_mean, atol=1e-6)
        assert torch.allclose(torch.tensor(ranks[r]["running_var"]), bn.running_var, atol=1e-5)


DINO_TYPES = """
import json, os, sys
import train.dino as d
from train.distributed import GlobalBatchNorm
from train.run import unwrap
build = d.DINO.build
def recorded(self, run):
    objects = build(self, run)
    kinds = {name: sorted({type(m).__name__ for m in net.modules() if "BatchNorm" in type(m).__name__})
             for name, net in (("student", unwrap(self.student)), ("teacher", self.teacher))}
    kinds["teacher_sum"] = float(sum(p.double().sum() for p in self.teacher.parameters()))
    with open(os.path.join(os.environ["COUNTS"], f"dino{os.environ['RANK']}.json"), "w") as f:
        json.dump(kinds, f)
    return objects
d.DINO.build = recorded
d.cli(sys.argv[1:], standalone_mode=False)
"""


def test_dino_batchnorm_is_synchronised_across_ranks(tmp_path):
    shards = make_toy_set(str(tmp_path / "toy"), count=32, size=32, per_shard=8)
    script = tmp_path / "dino_types.py"
    script.write_text(DINO_TYPES)
    env = dict(os.environ, PYTHONPATH=ROOT, COUNTS=str(tmp_path), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), "--shards", shards, "--out", str(tmp_path / "run"),
           "--arch", "small", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--max-steps", "1",
           "--local-crops", "1", "--out-dim", "16", "--hidden", "16", "--bottleneck", "8"]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"dino{r}.json").read_text()) for r in range(2)]
    for kinds in ranks:
        assert {k: v for k, v in kinds.items() if k != "teacher_sum"} == {"student": ["GlobalBatchNorm"],
                                                                           "teacher": ["GlobalBatchNorm"]}
    assert ranks[0]["teacher_sum"] == ranks[1]["teacher_sum"]      # one teacher: rank 0's broadcast weights
    assert load_checkpoint(str(tmp_path / "run"))["step"] == 1


# --------------------------------------------------------------------------- python -m train.launch


def launch(tmp_path, *trainer_args, **popen):
    """``python -m train.launch`` with 2 CPU ranks of RotNet on a toy set (its own session: a Ctrl-C
    reaches the launcher and every rank, as from a terminal)."""
    shards = make_toy_set(str(tmp_path / "toy"), count=32, size=32, per_shard=16)
    cmd = [sys.executable, "-m", "train.launch", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "train.rotnet", "--shards", shards, "--arch", "small",
           "--crop", "28", "--batch-size", "4", "--workers", "0", *map(str, trainer_args)]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def wait_for_checkpoint(p: subprocess.Popen, out_dir) -> None:
    """Until the launched run has written its first checkpoint (or ended); the deadline only bounds a hang."""
    import time

    deadline = time.monotonic() + 240
    while not (out_dir / "checkpoint.pt").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)


def errors(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("Error") or "Traceback" in ln]


def test_launch_refuses_a_missing_gpu_before_any_rank_starts(tmp_path):
    import torch
    if torch.cuda.is_available():
        import pytest
        pytest.skip("a CUDA device is visible here")
    p = launch(tmp_path, "--out", tmp_path / "run", "--device", "cuda")
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 1
    assert out.strip() == ("Error: --device cuda: no CUDA device is visible here; use --device cpu (checked before "
                           "starting 2 ranks of train.rotnet)")
    assert not (tmp_path / "run").exists()


def test_launch_ends_failed_ranks_with_one_line_each_and_no_launcher_traceback(tmp_path):
    p = launch(tmp_path, "--out", tmp_path / "run", "--device", "cpu", "--crop", "64")  # 64 > the 32-pixel set
    out, _ = p.communicate(timeout=180)
    assert p.returncode == 1
    lines = errors(out)
    assert len(lines) == 3 and lines[0] == lines[1] and lines[0].startswith("Error: ") and "crop" in lines[0]
    assert lines[2] == "Error: train.rotnet failed on rank 0 (exit 1), rank 1 (exit 1); each rank's own message " \
                       "is above"


def test_ctrl_c_under_launch_is_one_line_with_the_launch_command_that_resumes(tmp_path):
    import signal

    out_dir = tmp_path / "run"
    p = launch(tmp_path, "--out", out_dir, "--device", "cpu", "--epochs", "1000")
    wait_for_checkpoint(p, out_dir)
    os.killpg(p.pid, signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out[-3000:]
    lines = errors(out)
    assert len(lines) == 2, out[-3000:]       # rank 0's line and the launcher's: no rank 1 copy, no traceback
    assert lines[0].startswith(f"Error: interrupted at step ") and f"{out_dir}/checkpoint.pt holds the run" in lines[0]
    resume = lines[0].split("resume with: ", 1)[1]
    assert resume.startswith("python -m train.launch --nproc_per_node 2 --master_addr 127.0.0.1 --master_port ")
    assert resume.endswith(f"--out {out_dir} --device cpu --epochs 1000 --resume")
    assert lines[1] == ("Error: train.rotnet stopped by signal SIGINT; its ranks said above where their runs stand "
                        "(resume with the same command and --resume)")
    step = load_checkpoint(str(out_dir))["step"]
    argv = resume.split()[1:]                 # the printed command, on a free port, to a stop two steps on
    port = argv.index("--master_port") + 1
    argv[port] = str(free_port())
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    q = subprocess.run([sys.executable, *argv, "--stop-at-step", str(step + 2)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    assert q.returncode == 0, q.stderr[-3000:]
    assert load_checkpoint(str(out_dir))["step"] == step + 2


def test_launch_refuses_a_process_count_that_is_none(tmp_path):
    for n in ("0", "abc"):
        p = subprocess.run([sys.executable, "-m", "train.launch", "--nproc_per_node", n, "-m", "train.rotnet",
                            "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PYTHONPATH=ROOT))
        assert p.returncode == 1 and p.stdout == ""
        assert p.stderr.strip() == (f"Error: --nproc_per_node {n}: give a number of processes of at least 1 (or "
                                    f"auto, cpu, gpu)")


def test_killing_the_launcher_alone_takes_its_ranks_with_it_and_the_run_resumes_at_once(tmp_path):
    import signal

    from tests.test_engine import orphans_of

    out_dir = tmp_path / "run"
    p = launch(tmp_path, "--out", out_dir, "--device", "cpu", "--epochs", "1000")
    wait_for_checkpoint(p, out_dir)
    os.kill(p.pid, signal.SIGKILL)                 # the launcher alone, not its group
    p.communicate(timeout=60)
    assert not orphans_of(str(out_dir), within=60)  # no rank trains on for a dead launcher
    step = load_checkpoint(str(out_dir))["step"]
    q = launch(tmp_path / "again", "--out", out_dir, "--device", "cpu", "--epochs", "1000", "--resume",
               "--stop-at-step", step + 2)
    out, _ = q.communicate(timeout=180)
    assert q.returncode == 0, out[-3000:]
    assert load_checkpoint(str(out_dir))["step"] == step + 2
