"""Training variants (docs/variants.md): --variant paper|released sets each command's released options,
explicit options win, the resolved values are what the run records, and every option is bounded."""
import importlib
import json

import pytest
import torch
from click.testing import CliRunner

from train.config import parse_config, variant_config
from train.loader import make_loader, random_resized_crop_flip
from tests.toyset import make_toy_set

# command -> what --variant released sets (the table of docs/variants.md)
RELEASED = {
    "rotnet": {"crop_mode": "resized", "fc_dropout": 0.0},
    "deepcluster": {"features": "pre-relu"},
    "monogan": {"g_width": 128},
    "bigan": {"gen_size": 64},
}
# an explicit option that contradicts the variant, and the value it must keep
EXPLICIT = {
    "rotnet": (["--crop-mode", "fixed"], "crop_mode", "fixed"),
    "deepcluster": (["--features", "post-relu"], "features", "post-relu"),
    "monogan": (["--g-width", "96"], "g_width", 96),
    "bigan": (["--gen-size", "0"], "gen_size", 0),
}


def config_of(name, args):
    return parse_config(importlib.import_module(f"train.{name}").Config, args)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_variant_sets_what_the_table_says(name):
    paper, released = config_of(name, []), config_of(name, ["--variant", "released"])
    assert paper.variant == "paper" and released.variant == "released"
    for field, value in RELEASED[name].items():
        assert getattr(released, field) == value
        assert getattr(paper, field) != value, f"{field}: the paper's default must differ from the released value"
    # the variant touches nothing else
    assert {k for k in paper.to_dict() if paper.to_dict()[k] != released.to_dict()[k]} == {"variant", *RELEASED[name]}
    assert variant_config(type(paper), "released") == released
    assert importlib.import_module(f"train.{name}").Config.VARIANTS == {"released": RELEASED[name]}


@pytest.mark.parametrize("name", sorted(EXPLICIT))
def test_explicit_options_win_over_the_variant(name):
    args, field, value = EXPLICIT[name]
    cfg = config_of(name, ["--variant", "released", *args])
    assert getattr(cfg, field) == value and cfg.variant == "released"
    assert config_of(name, [*args, "--variant", "released"]) == cfg  # order on the line does not matter


@pytest.mark.parametrize("name,args,needle", [
    ("rotnet", ["--variant", "both"], "--variant"),
    ("rotnet", ["--crop-mode", "scaled"], "--crop-mode"),
    ("rotnet", ["--fc-dropout", "1"], "--fc-dropout"),
    ("rotnet", ["--fc-dropout", "-0.1"], "--fc-dropout"),
    ("deepcluster", ["--features", "fc6"], "--features"),
    ("monogan", ["--g-width", "0"], "--g-width"),
    ("bigan", ["--gen-size", "-16"], "--gen-size"),
])
def test_out_of_range_variant_options_are_refused_by_the_parser(tmp_path, name, args, needle):
    mod = importlib.import_module(f"train.{name}")
    r = CliRunner().invoke(mod.cli, ["--shards", str(tmp_path), "--out", str(tmp_path / "r"), *args])
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r").exists()


def test_feature_relu_stays_an_alias_of_features(tmp_path):
    assert config_of("deepcluster", ["--no-feature-relu"]).features == "pre-relu"
    assert config_of("deepcluster", ["--feature-relu"]).features == "post-relu"
    assert config_of("deepcluster", ["--variant", "released", "--feature-relu"]).features == "post-relu"
    assert config_of("deepcluster", ["--no-feature-relu"]).feature_relu is False
    assert config_of("deepcluster", ["--features", "pre-relu", "--no-feature-relu"]).features == "pre-relu"
    from train import deepcluster

    r = CliRunner().invoke(deepcluster.cli, ["--shards", str(tmp_path), "--out", str(tmp_path / "r"),
                                             "--features", "pre-relu", "--feature-relu"])
    assert r.exit_code == 2 and "--feature-relu contradicts --features pre-relu" in r.output
    assert not (tmp_path / "r").exists()


def test_the_run_records_the_resolved_variant(tmp_path):
    from train import rotnet

    shards = make_toy_set(str(tmp_path / "set"), count=32, size=32)
    r = CliRunner().invoke(rotnet.cli, ["--shards", shards, "--out", str(tmp_path / "r"), "--arch", "small",
                                        "--batch-size", "8", "--max-steps", "1", "--workers", "0",
                                        "--device", "cpu", "--variant", "released"])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "r" / "log.jsonl") as f:
        config = json.loads(f.readline())["config"]
    assert config["variant"] == "released" and config["crop_mode"] == "resized" and config["fc_dropout"] == 0.0


def test_released_fc_block_has_no_dropout():
    from train.classifier import build_classifier
    from train.models import EncoderSpec

    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 64)
    for p, same in ((0.0, True), (0.5, False)):
        net = build_classifier(EncoderSpec(arch="alexnet"), 4, 64, dropout=p).train()
        drops = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)]
        assert drops == [p, p]
        torch.manual_seed(1)
        a = net.mlp[0](torch.ones(8, 16))
        torch.manual_seed(2)
        b = net.mlp[0](torch.ones(8, 16))
        assert torch.equal(a, b) is same


def _epoch(shards, seed, skip=0):
    loader = make_loader(shards, batch_size=8, workers=0, seed=seed, transform=random_resized_crop_flip(28))
    return [b[0].clone() for b in loader.epoch(0, skip=skip)]


def test_resized_crop_mode_is_deterministic_and_resumes_mid_epoch(tmp_path):
    shards = make_toy_set(str(tmp_path / "set"), count=32, size=32)
    first, again, other = _epoch(shards, 0), _epoch(shards, 0), _epoch(shards, 1)
    assert len(first) == 4 and all(b.shape == (8, 3, 28, 28) for b in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert all(torch.equal(a, b) for a, b in zip(first[2:], _epoch(shards, 0, skip=2)))
    # a resized crop rescales: some patch is not any plain 28-pixel window of its 32-pixel source
    from train.loader import random_crop_flip

    fixed = make_loader(shards, batch_size=8, workers=0, seed=0, transform=random_crop_flip(28))
    assert not all(torch.equal(a, b) for a, b in zip(first, (b[0] for b in fixed.epoch(0))))


def test_an_old_checkpoints_feature_relu_is_not_silently_changed():
    from train.deepcluster import Config, check_saved_features

    old = {"config": {"feature_relu": False}}
    check_saved_features(old, Config(features="pre-relu"))
    check_saved_features(None, Config())
    check_saved_features({"config": {"features": "post-relu"}}, Config())  # new checkpoints: the loop compares
    with pytest.raises(Exception, match="pass --features pre-relu"):
        check_saved_features(old, Config())
