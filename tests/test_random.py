"""train.random: a seeded random-init checkpoint in the trainers' format."""
import torch
from click.testing import CliRunner

from train.checkpoint import load_checkpoint
from train.models import build_encoder
from train.random_init import cli


def run(out, *args):
    return CliRunner().invoke(cli, ["--out", str(out), *args])


def test_same_seed_same_weights_and_probe_readable(tmp_path):
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        r = run(tmp_path / name, "--arch", "small", "--seed", seed)
        assert r.exit_code == 0, r.output
    a, b, c = (load_checkpoint(str(tmp_path / n)) for n in "abc")
    assert a["method"] == "random" and a["encoder_spec"]["arch"] == "small"
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])
    assert not torch.equal(a["encoder"]["blocks.conv1.0.weight"], c["encoder"]["blocks.conv1.0.weight"])
    enc = build_encoder(a["encoder_spec"])
    enc.load_state_dict(a["encoder"])           # what the probe does
    assert a["config"]["seed"] == 7


def test_refuses_to_overwrite(tmp_path):
    assert run(tmp_path / "a").exit_code == 0
    before = (tmp_path / "a" / "checkpoint.pt").read_bytes()
    r = run(tmp_path / "a")
    assert r.exit_code != 0 and "exists" in r.output
    assert (tmp_path / "a" / "checkpoint.pt").read_bytes() == before
