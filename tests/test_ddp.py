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
