"""Supervised baseline: ImageFolder CLI, greyscale input, empty folders, fine-tuning with frozen blocks."""
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from train import random_init
from train import supervised
from train.checkpoint import load_checkpoint
from train.loader.folder import transforms_for

FAST = ["--arch", "small", "--batch-size", "4", "--workers", "0", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(supervised.cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes (bright / dark), 8 training and 3 validation images each, one greyscale per class."""
    root = tmp_path_factory.mktemp("imf")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c, base in (("bright", 200), ("dark", 50)):
            os.makedirs(root / split / c)
            for i in range(n):
                shape = (36, 36) if i == 0 else (36, 36, 3)
                arr = (base + rng.normal(0, 20, shape)).clip(0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.jpg")
    return root


def test_cli_trains_and_evaluates_on_an_image_folder(folder, tmp_path):
    out = tmp_path / "run"
    r = invoke("--data", folder, "--out", out, *FAST, "--epochs", "1")
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(str(out))
    assert ck["method"] == "supervised" and ck["encoder_spec"]["arch"] == "small" and ck["epoch"] == 1
    with open(out / "log.jsonl") as f:
        lines = [json.loads(line) for line in f]
    data = next(l for l in lines if l.get("event") == "data")
    assert (data["classes"], data["train"], data["eval"], data["eval_split"]) == (2, 16, 6, "val")
    epoch = next(l for l in lines if l.get("event") == "epoch")
    assert epoch["batches_done"] == 4 and 0.0 <= epoch["eval_top1"] <= 1.0


def test_greyscale_becomes_rgb_uint8():
    train_tf, eval_tf = transforms_for("small", 32)
    grey = Image.fromarray(np.full((40, 30), 7, np.uint8))
    for tf in (train_tf, eval_tf):
        x = tf(grey)
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    assert transforms_for("alexnet", 64)[1](grey).shape == (3, 64, 64)


def test_empty_image_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    r = invoke("--data", tmp_path / "empty", "--out", tmp_path / "run", *FAST)
    assert r.exit_code != 0 and "no images in ImageFolder layout" in r.output and "Traceback" not in r.output
    r = invoke("--data", tmp_path / "nope", "--out", tmp_path / "run2", *FAST)
    assert r.exit_code != 0 and "no such folder" in r.output
    r = invoke("--data", tmp_path / "empty", "--dataset", "cifar10", "--out", tmp_path / "run3", *FAST)
    assert r.exit_code != 0 and "no cifar10 files" in r.output


def test_frozen_blocks_stay_unchanged_when_fine_tuning(folder, tmp_path):
    init = tmp_path / "init"
    random_init.main(random_init.Config(out=str(init), arch="small", seed=1))
    out = tmp_path / "ft"
    r = invoke("--data", folder, "--out", out, *FAST, "--init-from", init / "checkpoint.pt",
               "--freeze", "conv1,conv2", "--max-steps", "3", "--lr", "0.1")
    assert r.exit_code == 0, r.output
    before, after = load_checkpoint(str(init))["encoder"], load_checkpoint(str(out))["encoder"]
    frozen = [k for k in before if k.startswith(("blocks.conv1.", "blocks.conv2."))]
    assert any("running_mean" in k for k in frozen)          # BatchNorm statistics included
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["blocks.conv3.0.weight"], after["blocks.conv3.0.weight"])
    assert not torch.equal(before["blocks.conv3.1.running_mean"], after["blocks.conv3.1.running_mean"])


def test_fine_tuning_bad_input(folder, tmp_path):
    init = tmp_path / "init"
    random_init.main(random_init.Config(out=str(init), arch="small", seed=1))
    r = invoke("--data", folder, "--out", tmp_path / "a", *FAST[2:], "--init-from", init)
    assert r.exit_code != 0 and "holds a 'small' encoder" in r.output and "--arch small" in r.output
    r = invoke("--data", folder, "--out", tmp_path / "b", *FAST, "--init-from", init, "--freeze", "conv5")
    assert r.exit_code != 0 and "--freeze conv5: no such block" in r.output


def test_scattering_frontend_trains_conv3_on_and_the_probes_read_it(folder, tmp_path):
    from probe.backbone import load_backbone
    from train.scattering import ScatteringFrontend

    out = tmp_path / "scat"
    r = invoke("--data", folder, "--out", out, *FAST, "--epochs", "1", "--frontend", "scattering")
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(str(out))
    assert ck["encoder_spec"]["frontend"] == "scattering" and ck["encoder_spec"]["frontend_size"] == 32
    bb = load_backbone(str(out))
    assert isinstance(bb.encoder.blocks["conv1"], ScatteringFrontend)
    x = torch.zeros(2, 3, 32, 32)
    assert bb.encoder.features(x, ["conv3"])["conv3"].shape == (2, 384, 3, 3)
    # the transform itself has no parameters: only the adapter (and conv3 on) learned
    assert not list(bb.encoder.blocks["conv1"].scattering.parameters())


@pytest.mark.parametrize("extra,needle", [(["--arch", "alexnet", "--size", "50"], "AlexNet needs inputs"),
                                          (["--init-from", "x.pt"], "drop one of the two")])
def test_scattering_frontend_bad_combinations_are_one_line(folder, tmp_path, extra, needle):
    r = invoke("--data", folder, "--out", tmp_path / "r", "--frontend", "scattering", "--batch-size", "4",
               "--workers", "0", "--device", "cpu", *([] if "--arch" in extra else ["--arch", "small"]), *extra)
    assert r.exit_code == 1 and needle in r.output and "Traceback" not in r.output


def test_init_from_a_checkpoint_without_conv1_conv2_is_refused(folder, tmp_path):
    scat = tmp_path / "scat"
    assert invoke("--data", folder, "--out", scat, *FAST, "--max-steps", "1", "--frontend", "scattering").exit_code == 0
    r = invoke("--data", folder, "--out", tmp_path / "ft", *FAST, "--init-from", scat, "--freeze", "conv1,conv2")
    assert r.exit_code == 1 and "no conv1/conv2 to initialise" in r.output


def test_init_layers_takes_only_the_named_blocks(folder, tmp_path):
    from train import random_init

    init = tmp_path / "init"
    random_init.main(random_init.Config(out=str(init), arch="small", seed=3))
    src = load_checkpoint(str(init))["encoder"]
    out = tmp_path / "ft"
    r = invoke("--data", folder, "--out", out, *FAST, "--max-steps", "1", "--init-from", init,
               "--init-layers", "conv1,conv2", "--freeze", "conv1,conv2")
    assert r.exit_code == 0, r.output
    got = load_checkpoint(str(out))["encoder"]
    assert torch.equal(got["blocks.conv1.0.weight"], src["blocks.conv1.0.weight"])
    assert torch.equal(got["blocks.conv2.0.weight"], src["blocks.conv2.0.weight"])
    assert not torch.equal(got["blocks.conv3.0.weight"], src["blocks.conv3.0.weight"])
    r = invoke("--data", folder, "--out", tmp_path / "bad", *FAST, "--init-from", init, "--init-layers", "conv9")
    assert r.exit_code == 1 and "--init-layers conv9: no such block" in r.output
