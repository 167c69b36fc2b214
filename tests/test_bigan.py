"""BiGAN trainer: network shapes, the joint discriminator, a few steps on a toy set, resume, probe, CLI."""
import json
import os

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.toyset import make_toy_set
from train.bigan import Config, cli, main
from train.engine import load_checkpoint
from train.gan_models import BiGANEncoder, JointDiscriminator, UpGenerator
from train.models import build_encoder

# S = 64 toy sets with a 64 crop: the smallest input AlexNet's conv/pool stack survives.
FAST = dict(batch_size=4, workers=0, crop=64, head_width=32, g_width=4, d_width=4, log_every=1)


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_paper_sized_networks():
    E, G, D = BiGANEncoder(200, 112, head_width=64), UpGenerator(200, 112, 8, n_up=4), JointDiscriminator(200, 112, 8)
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


def test_train_resume_samples_and_probe_encoder(tmp_path):
    toy = make_toy_set(str(tmp_path / "toy"), count=16, size=64, per_shard=8)
    out = str(tmp_path / "run")
    summary = main(Config(shards=toy, out=out, epochs=3, max_steps=2, sample_every=1, **FAST))
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

    main(Config(shards=toy, out=out, epochs=3, max_steps=3, resume=True, **FAST))
    ck2 = load_checkpoint(out)
    assert ck2["step"] == 3
    assert not torch.equal(ck2["encoder"]["blocks.conv1.0.weight"], ck["encoder"]["blocks.conv1.0.weight"])
    assert any(r.get("event") == "resumed" and r["from_step"] == 2 for r in read_log(out))


@pytest.mark.parametrize("crop, size, needle", [(28, 64, "--crop 28"), (64, 32, "--size 128"),
                                                (72, 128, "--crop 72")])
def test_cli_rejects_bad_sizes(tmp_path, crop, size, needle):
    toy = make_toy_set(str(tmp_path / "toy"), count=4, size=size, per_shard=4)
    out = str(tmp_path / "run")
    res = CliRunner().invoke(cli, ["--shards", toy, "--out", out, "--crop", str(crop), "--workers", "0"])
    assert res.exit_code != 0 and needle in res.output and "Traceback" not in res.output
    assert not os.path.exists(out)


def test_cli_runs_one_step(tmp_path):
    toy = make_toy_set(str(tmp_path / "toy"), count=8, size=64, per_shard=8)
    out = str(tmp_path / "run")
    args = ["--shards", toy, "--out", out, "--batch-size", "4", "--workers", "0", "--crop", "64",
            "--head-width", "16", "--g-width", "4", "--d-width", "4", "--max-steps", "1"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out)["config"]["crop"] == 64
    res = CliRunner().invoke(cli, args)  # same --out again without --resume
    assert res.exit_code != 0 and "--resume" in res.output
