"""probe.style: Gatys et al.'s style transfer on an encoder's conv layers (the paper's Fig. 3)."""
import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from probe.backbone import load_backbone
from probe.style import StyleConfig, StyleLoss, cli, gram, resolve_layers, transfer
from tests.pictures import blobs, encoder_checkpoint, one_line_error, stripes, write_image


@pytest.fixture
def images(tmp_path):
    return (write_image(tmp_path / "content.png", blobs(40, 48)),
            write_image(tmp_path / "style.png", stripes(40, 40, 6, 0.6)))


def test_gram_matches_its_definition():
    f = torch.randn(1, 5, 3, 4)
    want = torch.tensor([[(f[0, i] * f[0, j]).sum().item() for j in range(5)] for i in range(5)]) / (5 * 3 * 4)
    torch.testing.assert_close(gram(f), want)


@pytest.mark.parametrize("init", ["content", "noise"])
def test_transfer_lowers_the_loss(tmp_path, images, init):
    from probe.pictures import read_image

    bb = load_backbone(encoder_checkpoint(tmp_path))
    content, style = read_image(images[0], "--content", 32), read_image(images[1], "--style", 32)
    cfg = resolve_layers(bb, StyleConfig(steps=15, size=32, init=init), "--checkpoint")
    assert cfg.style_layers == ("conv1", "conv2", "conv3", "conv4")
    img, rec = transfer(bb, content, style, cfg)
    assert rec["end"]["total"] < 0.8 * rec["start"]["total"]
    assert rec["end"]["style"] < rec["start"]["style"]
    assert img.shape == content.shape and 0 <= img.min() and img.max() <= 1
    bb.assert_unchanged()


def scaled_copy(bb, factor: float):
    """The same network with layer l's activations factor^l times the original (ReLU is positively
    homogeneous: each conv's weight times factor, its bias times factor^l)."""
    with torch.no_grad():
        for depth, block in enumerate(bb.encoder.blocks.values(), start=1):
            block[0].weight.mul_(factor)
            block[0].bias.mul_(factor ** depth)
    return bb


def test_relative_losses_do_not_depend_on_the_activation_scale(tmp_path, images):
    from probe.pictures import read_image

    path = encoder_checkpoint(tmp_path)
    content, style = read_image(images[0], "--content", 32), read_image(images[1], "--style", 32)
    x = torch.rand_like(content)
    for scale, same in [("relative", True), ("tutorial", False)]:
        cfg = resolve_layers(load_backbone(path), StyleConfig(loss_scale=scale), "--checkpoint")
        a = StyleLoss(load_backbone(path), content, style, cfg)(x)
        b = StyleLoss(scaled_copy(load_backbone(path), 3.0), content, style, cfg)(x)
        close = all(torch.isclose(u, v, rtol=1e-3) for u, v in zip(a, b))
        assert close == same


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_writes_figure_and_record(tmp_path, images):
    a, b = encoder_checkpoint(tmp_path, seed=0, name="a.pt"), encoder_checkpoint(tmp_path, seed=1, name="b.pt")
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    base = ["--content", images[0], "--style", images[1], "--steps", 5, "--size", 32, "--device", "cpu"]
    r = run(["--checkpoint", a, "--out", one, *base])
    assert r.exit_code == 0, r.output
    r = run(["--checkpoint", a, "--compare", b, "--out", two, *base, "--style-weight", 100,
             "--content-layers", "conv3"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "two.json").read_text())
    assert rec["config"]["steps"] == 5 and rec["config"]["style_weight"] == 100
    assert [run_["checkpoint"]["method"] for run_ in rec["runs"]] == ["random-0", "random-1"]
    assert rec["runs"][0]["content_layers"] == ["conv3"]
    assert rec["runs"][1]["style_layers"] == ["conv1", "conv2", "conv3", "conv4"]
    assert all(r_["losses"]["end"]["total"] < r_["losses"]["start"]["total"] for r_ in rec["runs"])
    # four panels (content, style, two results) against three
    assert Image.open(two).width > Image.open(one).width


def test_bad_inputs_are_one_line(tmp_path, images):
    ck = encoder_checkpoint(tmp_path)
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    not_ck = tmp_path / "not.pt"
    not_ck.write_text("hello")
    out = tmp_path / "o.png"
    base = ["--steps", 2, "--size", 32, "--out", out, "--device", "cpu"]
    cases = [
        (["--checkpoint", ck, "--content", junk, "--style", images[1]], "--content"),
        (["--checkpoint", ck, "--content", images[0], "--style", tmp_path / "missing.png"], "--style"),
        (["--checkpoint", ck, "--content", images[0], "--style", images[1], "--style-layers", "conv1,conv9"],
         "--style-layers conv9"),
        (["--checkpoint", not_ck, "--content", images[0], "--style", images[1]], "not a readable checkpoint"),
        (["--checkpoint", ck, "--compare", tmp_path / "none.pt", "--content", images[0], "--style", images[1]],
         "no such checkpoint"),
    ]
    for args, needle in cases:
        assert needle in one_line_error(run(args + base))
    assert not out.exists()
    r = run(["--checkpoint", ck, "--content", images[0], "--style", images[1], "--steps", 0, "--out", out])
    assert r.exit_code != 0 and "1<=x<=100000" in r.output
