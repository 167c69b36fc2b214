"""BiGAN trainer: network shapes, the joint discriminator, a few steps on a toy set, resume, probe, CLI."""
import json
import os

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.toyset import make_toy_set
from train.bigan import Config, cli, lr_at, main
from train.checkpoint import load_checkpoint
from train.gan_nets import BiGANEncoder, JointDiscriminator, UpGenerator
from train.models import build_encoder

# S = 64 toy sets with a 64 crop: the smallest input AlexNet's conv/pool stack survives.
FAST = dict(batch_size=4, workers=0, crop=64, head_width=32, g_width=4, d_width=4, log_every=1)


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_paper_sized_networks():
    E, G = BiGANEncoder(200, 112, head_width=64), UpGenerator(200, 112, 8, n_up=4)
    D = JointDiscriminator(200, 112, 8)
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    z = E.eval()(x)
    img = G.eval()(torch.rand(2, 200) * 2 - 1)
    assert z.shape == (2, 200) and img.shape == (2, 3, 112, 112)
    assert img.abs().max() < 1
    assert D(x, z).shape == (2,)
    assert E.encoder.spec.act == "leaky" and E.encoder.spec.arch == "alexnet"


def test_latent_reaches_every_discriminator_layer():
    D = JointDiscriminator(16, 64, 4)
    x, z = torch.randn(3, 3, 64, 64), torch.randn(3, 16, requires_grad=True)
    D(x, z).sum().backward()
    for layer in D.zbias:
        assert layer.weight.grad.abs().sum() > 0
    assert not torch.allclose(D(x, z), D(x, torch.randn(3, 16)))


def test_train_samples_probe_encoder_and_exact_resume(tmp_path):
    toy = make_toy_set(str(tmp_path / "toy"), count=16, size=64, per_shard=8)
    out = str(tmp_path / "run")
    summary = main(Config(shards=toy, out=out, epochs=1, max_steps=2, sample_every=1, **FAST))
    assert {"d_loss", "eg_loss", "d_acc_real", "d_acc_fake", "eval_recon_mse"} <= set(summary)
    assert 0 <= summary["d_acc_real"] <= 1
    train = [r for r in read_log(out)[1:] if r.get("event") == "train"]
    assert [r["step"] for r in train] == [1, 2]
    samples = os.path.join(out, "samples")
    with Image.open(os.path.join(samples, "step0000001.png")) as im:
        assert im.size == (8 * 66 + 2, 8 * 66 + 2)
    with Image.open(os.path.join(samples, "step0000002-recon.png")) as im:
        assert im.size == (8 * 66 + 2, 66 + 2)  # 4 images beside their 4 reconstructions
    ck = load_checkpoint(out)
    enc = build_encoder(ck["encoder_spec"])
    enc.load_state_dict(ck["encoder"])
    feats = enc.eval().features(torch.zeros(1, 3, 224, 224))
    assert list(feats) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert feats["conv5"].shape == (1, 256, 13, 13) and ck["encoder_spec"]["act"] == "leaky"

    assert ck["epoch"] == 0 and ck["extra"]["batches_done"] == 2

    # Resuming mid-epoch continues exactly: the same weights as one uninterrupted epoch of 4 steps.
    main(Config(shards=toy, out=out, epochs=1, resume=True, **FAST))
    once = str(tmp_path / "once")
    main(Config(shards=toy, out=once, epochs=1, **FAST))
    a, b = load_checkpoint(once), load_checkpoint(out)
    assert a["step"] == b["step"] == 4 and b["epoch"] == 1
    assert any(r.get("event") == "resumed" and r["from_step"] == 2 for r in read_log(out))
    for net in ("encoder", "generator", "discriminator"):
        for k, v in a["state"][net].items():
            assert torch.equal(v, b["state"][net][k]), (net, k)


@pytest.mark.parametrize("crop, size, extra, needle", [(28, 64, [], "--crop 28"), (64, 32, [], "--size 128"),
                                                       (72, 128, [], "--crop 72"),
                                                       (64, 64, ["--gen-size", "40"], "--gen-size 40")])
def test_cli_rejects_bad_sizes(tmp_path, crop, size, extra, needle):
    toy = make_toy_set(str(tmp_path / "toy"), count=4, size=size, per_shard=4)
    out = str(tmp_path / "run")
    res = CliRunner().invoke(cli, ["--shards", toy, "--out", out, "--crop", str(crop), "--workers", "0", *extra])
    assert res.exit_code != 0 and needle in res.output and "Traceback" not in res.output
    assert not os.path.exists(out)


def test_cli_one_step_with_a_smaller_generator(tmp_path):
    # The original's high-res variant: E reads the crop, G and D work at a smaller side (--gen-size).
    toy = make_toy_set(str(tmp_path / "toy"), count=8, size=64, per_shard=8)
    out = str(tmp_path / "run")
    args = ["--shards", toy, "--out", out, "--batch-size", "4", "--workers", "0", "--crop", "64",
            "--gen-size", "32", "--head-width", "16", "--g-width", "4", "--d-width", "4", "--max-steps", "1"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(out)
    assert ck["config"]["crop"] == 64 and ck["config"]["gen_size"] == 32
    with Image.open(os.path.join(out, "samples", "step0000001-recon.png")) as im:
        assert im.size == (8 * 34 + 2, 34 + 2)  # 32-px tiles: resized crops beside reconstructions
    res = CliRunner().invoke(cli, args)  # same --out again without --resume
    assert res.exit_code != 0 and "--resume" in res.output


def test_lr_decay_follows_the_released_schedule():
    # --epochs 4 --decay-epochs 2: two constant epochs, then the decay (train_gan.py's set_lr)
    exp = Config(lr=1.0, epochs=4, decay_epochs=2)
    assert [lr_at(e, exp) for e in range(4)] == pytest.approx([1.0, 1.0, 0.1, 0.01])   # log-linear to 0.01
    lin = Config(lr=1.0, epochs=4, decay_epochs=2, linear_decay=True)
    assert [lr_at(e, lin) for e in range(4)] == pytest.approx([1.0, 1.0, 1.0, 0.5])    # towards 0, never 0
    assert lr_at(3, Config(lr=2.0, epochs=4, decay_epochs=4, final_lr_mult=0.5)) == pytest.approx(1.0)
    assert {lr_at(e, Config(lr=2e-4, epochs=3)) for e in range(3)} == {2e-4}          # default: constant


@pytest.mark.parametrize("extra, needle", [(["--decay-epochs", "3"], "--decay-epochs 3"),
                                           (["--decay-epochs", "1", "--final-lr-mult", "0"], "--final-lr-mult 0")])
def test_cli_rejects_bad_decay(tmp_path, extra, needle):
    toy = make_toy_set(str(tmp_path / "toy"), count=4, size=64, per_shard=4)
    out = str(tmp_path / "run")
    res = CliRunner().invoke(cli, ["--shards", toy, "--out", out, "--crop", "64", "--workers", "0",
                                   "--epochs", "2", *extra])
    assert res.exit_code != 0 and needle in res.output and "Traceback" not in res.output
    assert not os.path.exists(out)


def test_decayed_lr_is_applied_and_logged_per_epoch(tmp_path):
    toy = make_toy_set(str(tmp_path / "toy"), count=4, size=64, per_shard=4)
    out = str(tmp_path / "run")
    main(Config(shards=toy, out=out, epochs=2, decay_epochs=1, lr=1e-3, sample_every=0, **FAST))
    epochs = [r for r in read_log(out) if r.get("event") == "epoch"]
    assert [r["lr"] for r in epochs] == pytest.approx([1e-3, 1e-5])
    ck = load_checkpoint(out)
    assert [g["lr"] for g in ck["state"]["opt_d"]["param_groups"]] == pytest.approx([1e-5, 1e-5])
