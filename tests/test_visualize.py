"""probe.visualize: activation maximisation and top-k retrieval of units (the paper's Fig. 5)."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from probe.backbone import load_backbone
from probe.visualize import (ImageParam, MaximizeConfig, RetrieveConfig, cli, list_images, maximize, retrieve,
                             standard_transforms, unit_response)
from tests.pictures import blobs, encoder_checkpoint, one_line_error, write_image
from train.config import CommonConfig
from train.run import write_bare_checkpoint
from train.models import Encoder, EncoderSpec


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("param,decorrelate,transforms,margin",
                         [("fft", True, False, 0.05), ("pixel", False, False, 0.05), ("fft", True, True, 0.0)])
def test_maximisation_raises_the_units_response(tmp_path, param, decorrelate, transforms, margin):
    """Plain gradient ascent raises each unit's response clearly within a few steps; under Lucid's
    transforms (which the plain image is not optimised for) it still rises."""
    bb = load_backbone(encoder_checkpoint(tmp_path))
    units = [0, 5, 17]
    size = 32 if not transforms else 40
    cfg = MaximizeConfig(steps=20, size=size, param=param, decorrelate=decorrelate,
                         transforms=transforms)
    images, resp = maximize(bb, "conv2", units, cfg)
    assert images.shape == (3, 3, size, size) and 0 <= images.min() and images.max() <= 1
    for u in map(str, units):
        assert resp["end"][u] > resp["start"][u] + margin
    # the recorded responses are the unit's own mean response on its image
    got = unit_response(bb, images, "conv2")
    for i, u in enumerate(units):
        assert got[i, u].mean().item() == pytest.approx(resp["end"][str(u)], rel=1e-4, abs=1e-5)
    bb.assert_unchanged()


def test_fourier_parameterisation_starts_grey_and_smooth():
    g = torch.Generator().manual_seed(0)
    x = ImageParam(2, 64, "fft", True, g)()
    assert x.shape == (2, 3, 64, 64)
    assert (x - 0.5).abs().max() < 0.1          # sigmoid of a small image: near grey, as Lucid starts
    spec = torch.fft.rfft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs()
    assert spec[..., :4, :4].mean() > 3 * spec[..., 16:32, 16:].mean()   # 1/f: low frequencies dominate


def test_transforms_are_seeded_and_keep_the_image_near_its_size():
    x = torch.rand(2, 3, 64, 64)
    a = standard_transforms(x, torch.Generator().manual_seed(3))
    b = standard_transforms(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    # pad 12, crop 8 and 4 off, scale 0.9..1.1
    assert all(int(0.9 * 76) - 4 <= s <= int(1.1 * 76) - 4 for s in a.shape[-2:])


def brightness_checkpoint(folder) -> str:
    """conv1 unit 0 sums the pixels (brightness), unit 1 its negative: the true ranking is known."""
    enc = Encoder(EncoderSpec(arch="small"))
    with torch.no_grad():
        conv = enc.blocks["conv1"][0]
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0] = 1.0
        conv.weight[1] = -1.0
    path = str(folder / "bright.pt")
    write_bare_checkpoint(path, method="handmade", cfg=CommonConfig(), encoder=enc)
    return path


@pytest.fixture
def grey_folder(tmp_path):
    """Constant grey images of known levels, named so that folder order is not brightness order."""
    levels = np.random.default_rng(0).permutation(np.linspace(0.05, 0.95, 12))
    for i, v in enumerate(levels):
        write_image(tmp_path / "data" / f"c{i % 3}" / f"img{i:02d}.png", np.full((36, 40, 3), v))
    return tmp_path / "data", levels


def test_retrieval_returns_the_true_top_k(tmp_path, grey_folder):
    folder, levels = grey_folder
    bb = load_backbone(brightness_checkpoint(tmp_path))
    files = list_images(str(folder))
    level_of = {f"img{i:02d}.png": v for i, v in enumerate(levels)}
    by_file = np.array([level_of[f.rsplit("/", 1)[1]] for f in files])
    side, top, scores = retrieve(bb, files, "conv1", [0, 1], RetrieveConfig(top=4, batch_size=5))
    assert side == 32
    assert list(top[0]) == list(np.argsort(-by_file)[:4])      # brightest first
    assert list(top[1]) == list(np.argsort(by_file)[:4])       # darkest first
    assert (np.diff(scores[0]) <= 0).all()


def test_retrieval_agrees_with_brute_force_on_random_images(tmp_path):
    for i in range(7):
        write_image(tmp_path / "data" / f"{i}.png", blobs(32, 32, seed=i))
    bb = load_backbone(encoder_checkpoint(tmp_path))
    files = list_images(str(tmp_path / "data"))
    _, top, _ = retrieve(bb, files, "conv3", [2, 9], RetrieveConfig(top=3, batch_size=3))
    from probe.pictures import read_image

    x = torch.cat([read_image(f, "--data") for f in files])
    maxima = unit_response(bb, x, "conv3").amax(dim=(-2, -1))
    for k, u in enumerate([2, 9]):
        assert list(top[k]) == list(torch.argsort(maxima[:, u], descending=True, stable=True)[:3])


def test_cli_maximize_and_retrieve(tmp_path, grey_folder):
    folder, _ = grey_folder
    ck = brightness_checkpoint(tmp_path)
    other = encoder_checkpoint(tmp_path)
    r = run(["maximize", "--checkpoint", other, "--layer", "conv1", "--units", "0,3", "--steps", 5, "--size", 32,
             "--out", tmp_path / "max.png", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "max.json").read_text())
    assert rec["units"] == [0, 3] and rec["config"]["steps"] == 5 and set(rec["response"]["end"]) == {"0", "3"}
    r = run(["retrieve", "--checkpoint", ck, "--data", folder, "--layer", "conv1", "--units", "0", "--top", 4,
             "--out", tmp_path / "top.png", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "top.json").read_text())
    assert rec["images"] == 12 and len(rec["top"]["0"]) == 4
    assert [t["score"] for t in rec["top"]["0"]] == sorted([t["score"] for t in rec["top"]["0"]], reverse=True)
    assert (tmp_path / "top.png").stat().st_size > 0


def test_bad_inputs_are_one_line(tmp_path, grey_folder):
    folder, _ = grey_folder
    ck = encoder_checkpoint(tmp_path)
    not_ck = tmp_path / "bad.pt"
    not_ck.write_text("no")
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    (broken / "x.jpg").parent.mkdir()
    (broken / "x.jpg").write_text("not a jpeg")
    out = ["--out", tmp_path / "o.png", "--device", "cpu"]
    unit = ["--layer", "conv2", "--units", "0"]
    cases = [
        (["maximize", "--checkpoint", ck, "--layer", "conv2", "--units", "0,256"], "--units 256"),
        (["maximize", "--checkpoint", ck, "--layer", "conv2", "--units", "-1"], "--units -1"),
        (["maximize", "--checkpoint", ck, "--layer", "conv5", "--units", "0"], "--layer conv5"),
        (["maximize", "--checkpoint", not_ck, *unit], "not a readable checkpoint"),
        (["retrieve", "--checkpoint", ck, "--data", tmp_path / "empty", *unit], "no images"),
        (["retrieve", "--checkpoint", ck, "--data", tmp_path / "nowhere", *unit], "no such folder"),
        (["retrieve", "--checkpoint", ck, "--data", broken, *unit], "x.jpg"),
        (["retrieve", "--checkpoint", ck, "--data", folder, "--layer", "conv2", "--units", "1,x"], "--units"),
    ]
    for args, needle in cases:
        assert needle in one_line_error(run(args + out)), args
    assert not (tmp_path / "o.png").exists()


def test_pre_activation_is_the_relus_input(tmp_path):
    from probe.backbone import activations

    bb = load_backbone(encoder_checkpoint(tmp_path, arch="alexnet"))
    x = torch.rand(2, 3, 67, 67) * 2 - 1
    layers = ["conv2", "conv5"]
    pre, post = activations(bb.encoder, x, layers, pre_activation=True), bb.features(x, layers)
    for n in layers:
        assert (pre[n] < 0).any()                      # really before the ReLU
        torch.testing.assert_close(torch.relu(pre[n]), post[n])
