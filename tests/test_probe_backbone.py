"""Checkpoint loading, BatchNorm folding and freezing of the probed backbone."""
import os

import click
import pytest
import torch
from torch import nn

from probe.backbone import fold_bn, load_backbone, strip_prefixes
from train.checkpoint import load_checkpoint, save_checkpoint
from train.config import CommonConfig
from train.run import write_bare_checkpoint
from train.models import Encoder, EncoderSpec


def randomise_bn(enc: Encoder, seed: int = 0) -> Encoder:
    """Non-trivial running statistics and affine parameters, so folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    for m in enc.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    for m in enc.modules():
        if isinstance(m, nn.Conv2d):
            m.bias.data.copy_(torch.randn(m.out_channels, generator=g) * 0.1)
    return enc


def save(tmp_path, enc: Encoder, name: str = "ck.pt", method: str = "random") -> str:
    path = str(tmp_path / name)
    write_bare_checkpoint(path, method=method, cfg=CommonConfig(), encoder=enc)
    return path


def test_fold_bn_matches_conv_bn_in_eval():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
    randomise_bn(nn.Sequential(conv, bn))
    bn.eval()
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(fold_bn(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", [EncoderSpec(arch="small"), EncoderSpec(arch="alexnet"),
                                  EncoderSpec(arch="alexnet", sobel=True, act="leaky"),
                                  EncoderSpec(arch="small", norm="layer")])
def test_folded_backbone_same_activations(tmp_path, spec):
    torch.manual_seed(1)
    enc = randomise_bn(Encoder(spec)).eval()
    bb = load_backbone(save(tmp_path, enc))
    assert bb.folded == (len(enc.layer_names) if spec.norm == "bn" else 0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.encoder.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = enc.features(x)
    got = bb.features(x, bb.layer_names)
    for name in enc.layer_names:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4)


def test_backbone_is_frozen_and_change_is_detected(tmp_path):
    bb = load_backbone(save(tmp_path, Encoder(EncoderSpec(arch="small"))))
    assert not bb.encoder.training and not any(p.requires_grad for p in bb.encoder.parameters())
    bb.assert_unchanged()
    with torch.no_grad():
        next(bb.encoder.parameters()).add_(1e-3)
    with pytest.raises(RuntimeError, match="changed"):
        bb.assert_unchanged()


def test_train_mode_is_detected(tmp_path):
    bb = load_backbone(save(tmp_path, Encoder(EncoderSpec(arch="small"))))
    bb.encoder.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        bb.assert_unchanged()


def test_module_prefix_and_run_folder(tmp_path):
    enc = randomise_bn(Encoder(EncoderSpec(arch="small")))
    path = save(tmp_path, enc)
    ck = load_checkpoint(path)
    ck["encoder"] = {"module." + k: v for k, v in ck["encoder"].items()}
    os.makedirs(tmp_path / "run")
    save_checkpoint(ck, str(tmp_path / "run" / "checkpoint.pt"))
    a, b = load_backbone(path), load_backbone(str(tmp_path / "run"))
    assert a.encoder_hash == b.encoder_hash
    assert strip_prefixes({"module._orig_mod.x": 1}) == {"x": 1}


def test_unknown_and_missing_keys_are_named(tmp_path):
    path = save(tmp_path, Encoder(EncoderSpec(arch="small")))
    ck = load_checkpoint(path)
    ck["encoder"]["extra.weight"] = torch.zeros(1)
    del ck["encoder"]["blocks.conv2.0.weight"]
    save_checkpoint(ck, path)
    with pytest.raises(click.ClickException) as e:
        load_backbone(path)
    assert "blocks.conv2.0.weight" in e.value.message and "extra.weight" in e.value.message


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("hello")
    with pytest.raises(click.ClickException, match="not a readable checkpoint"):
        load_backbone(str(bad))


def test_missing_layer_is_a_clear_error(tmp_path):
    bb = load_backbone(save(tmp_path, Encoder(EncoderSpec(arch="small"))))
    with pytest.raises(click.ClickException, match="conv5"):
        bb.check_layers(["conv5"])
    assert bb.check_layers(["conv3", "conv1"]) == ["conv1", "conv3"]


def test_alexnet_on_cifar_sized_inputs(tmp_path):
    bb = load_backbone(save(tmp_path, Encoder(EncoderSpec(arch="alexnet"))))
    feats = bb.features(torch.zeros(1, 3, 32, 32), bb.layer_names)
    assert feats["conv5"].shape == (1, 256, 1, 1)
