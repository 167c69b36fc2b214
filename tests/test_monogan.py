"""MonoGAN (WGAN-GP) trainer: per-sample penalty, a few steps on a toy set, resume, probe interface, CLI."""
import json
import os

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from augment.manifest import read_manifest
from tests.toyset import make_toy_set
from train.checkpoint import load_checkpoint
from train.gan_nets import Critic, gradient_penalty
from train.models import Encoder, EncoderSpec, build_encoder
from train.monogan import Config, cli, main

FAST = dict(batch_size=8, workers=0, n_critic=2, g_width=8, log_every=1, sample_every=0)


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def penalty_changes(critic: nn.Module, j: int = 2) -> torch.Tensor:
    """Which samples' penalty terms change when only sample ``j`` of the real batch is perturbed."""
    torch.manual_seed(0)
    real, fake, eps = torch.randn(5, 3, 32, 32), torch.randn(5, 3, 32, 32), torch.rand(5)
    before = gradient_penalty(critic, real, fake, eps).detach()
    real2 = real.clone()
    real2[j] += torch.randn(3, 32, 32)
    after = gradient_penalty(critic, real2, fake, eps).detach()
    return ~torch.isclose(before, after, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_gradient_penalty_is_per_sample(norm):
    torch.manual_seed(0)  # the critic's init, not whatever earlier tests left in the global generator
    changed = penalty_changes(Critic(norm))
    assert changed.tolist() == [False, False, True, False, False]


def test_batchnorm_critic_would_mix_samples():
    # The same probe on a BatchNorm critic: one sample's change leaks into every term, hence no BN.
    class BNCritic(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder(EncoderSpec(arch="small", norm="bn", act="leaky"))
            self.fc = nn.Linear(256 * 3 * 3, 1)

        def forward(self, x):
            return self.fc(torch.flatten(self.encoder(x), 1)).squeeze(1)

    assert penalty_changes(BNCritic()).sum() > 1
    with pytest.raises(ValueError, match="mixes samples"):
        Critic("bn")


def test_gradient_penalty_value_of_a_linear_critic():
    # D(x) = <w, x>: the gradient is w everywhere, so every term is (||w|| - 1)^2.
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 1, bias=False))
    gp = gradient_penalty(lambda x: lin(x).squeeze(1), torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4))
    expected = (lin[1].weight.norm() - 1) ** 2
    assert torch.allclose(gp, expected.expand(3), atol=1e-6)


def test_train_writes_checkpoint_log_samples_and_probe_encoder(tmp_path):
    toy = make_toy_set(str(tmp_path / "toy"), count=32, size=32, per_shard=16)
    out = str(tmp_path / "run")
    summary = main(Config(shards=toy, out=out, epochs=1, max_steps=2, **(FAST | {"sample_every": 1})))
    assert {"critic_loss", "gen_loss", "gp", "wasserstein", "eval_wasserstein"} <= set(summary)
    log = read_log(out)
    assert log[0]["method"] == "monogan" and log[0]["config"]["n_critic"] == 2
    train = [r for r in log[1:] if r.get("event") == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["gp"] >= 0 for r in train)
    with Image.open(os.path.join(out, "samples", "step0000001.png")) as im:
        assert im.size == (8 * 34 + 2, 8 * 34 + 2) and im.mode == "RGB"
    ck = load_checkpoint(out)
    assert ck["step"] == 2 and ck["method"] == "monogan"
    set_id = read_manifest(toy).id
    assert ck["extra"]["set_id"] == set_id
    assert [r["set_id"] for r in log if r.get("event") == "data"] == [set_id]
    enc = build_encoder(ck["encoder_spec"])
    enc.load_state_dict(ck["encoder"])
    feats = enc.eval().features(torch.zeros(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats.values()] == [(96, 11, 11), (256, 6, 6), (384, 3, 3), (256, 3, 3)]
    assert ck["encoder_spec"]["norm"] == "none" and ck["encoder_spec"]["arch"] == "small"


def test_resume_continues_exactly(tmp_path):
    # 4 batches per epoch, a generator step after every 2nd: stop after step 1 (mid-epoch) and resume.
    toy = make_toy_set(str(tmp_path / "toy"), count=32, size=32, per_shard=8)
    once, twice = str(tmp_path / "once"), str(tmp_path / "twice")
    main(Config(shards=toy, out=once, epochs=1, **FAST))
    main(Config(shards=toy, out=twice, epochs=1, max_steps=1, **FAST))
    mid = load_checkpoint(twice)
    assert mid["epoch"] == 0 and mid["extra"]["batches_done"] == 2
    main(Config(shards=toy, out=twice, epochs=1, resume=True, **FAST))
    a, b = load_checkpoint(once), load_checkpoint(twice)
    assert a["step"] == b["step"] == 2 and b["epoch"] == 1 and b["extra"]["batches_done"] == 0
    assert any(r.get("event") == "resumed" for r in read_log(twice))
    for net in ("critic", "generator"):
        for k, v in a["state"][net].items():
            assert torch.equal(v, b["state"][net][k]), (net, k)


def test_cli_time_budget_stops_with_checkpoint(tmp_path):
    toy = make_toy_set(str(tmp_path / "toy"), count=32, size=32, per_shard=16)
    out = str(tmp_path / "run")
    res = CliRunner().invoke(cli, ["--shards", toy, "--out", out, "--batch-size", "8", "--workers", "0",
                                   "--n-critic", "1", "--g-width", "8", "--epochs", "50",
                                   "--time-budget", "0.001"])
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(out)
    assert ck["step"] == 1 and ck["epoch"] == 0 and ck["extra"]["time_budget_reached"]
    assert read_log(out)[-1]["event"] == "time_budget"


def test_cli_rejects_a_set_of_the_wrong_size(tmp_path):
    toy = make_toy_set(str(tmp_path / "toy"), count=16, size=48, per_shard=16)
    out = str(tmp_path / "run")
    res = CliRunner().invoke(cli, ["--shards", toy, "--out", out, "--workers", "0"])
    assert res.exit_code != 0
    assert "--size 32" in res.output and "Traceback" not in res.output
    assert not os.path.exists(os.path.join(out, "checkpoint.pt"))


def test_cli_requires_shards(tmp_path):
    res = CliRunner().invoke(cli, ["--out", str(tmp_path / "run")])
    assert res.exit_code != 0 and "--shards" in res.output


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    import click

    toy = make_toy_set(str(tmp_path / "toy"), count=16, size=32, per_shard=16)
    out = str(tmp_path / "run")
    with pytest.raises(click.ClickException, match="critic loss is nan"):
        main(Config(shards=toy, out=out, epochs=1, gp_weight=float("nan"), **FAST))
    assert not os.path.exists(os.path.join(out, "checkpoint.pt"))
    assert read_log(out)[-1]["event"] == "non_finite"


@pytest.mark.data
def test_on_a_rendered_cifar_preset_ablation_set_of_image_b(tmp_path, shared_data):
    # The pipeline of Table 1: render a `--preset cifar` set of Image B (tiny count, one ablation), train.
    from augment.cli import cli as augment

    image = os.path.join(shared_data, "images", "animals.png")
    sset, out = str(tmp_path / "set"), str(tmp_path / "run")
    res = CliRunner().invoke(augment, ["render", "--image", image, "--preset", "cifar", "--count", "32",
                                       "--samples-per-shard", "16", "--out", sset, "--quiet", "--no-scale"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["--shards", sset, "--out", out, "--batch-size", "8", "--workers", "0",
                                   "--n-critic", "2", "--g-width", "8", "--max-steps", "1"])
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(out)
    assert ck["step"] == 1 and ck["extra"]["set_id"] == read_manifest(sset).id
