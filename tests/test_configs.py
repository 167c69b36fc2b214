"""Every trainer's Config is the only source of its defaults: the generated command gives Config() with no
options, keeps every option users call, and rejects values out of range in the parser."""
import importlib

import pytest
from click.testing import CliRunner

from train.config import parse_config

COMMON = {"--shards", "--out", "--batch-size", "--workers", "--device", "--seed", "--epochs", "--max-steps",
          "--resume", "--amp", "--no-amp", "--time-budget", "--log-every"}
# The options each command had before the one-loop refactor (none may disappear), and the variants' options.
OPTIONS = {
    "rotnet": COMMON | {"--arch", "--crop", "--eval-batches", "--gamma", "--lr", "--milestones", "--momentum",
                        "--nesterov", "--weight-decay", "--variant", "--crop-mode", "--fc-dropout"},
    "deepcluster": COMMON | {"--crop", "--feature-relu", "--k", "--kmeans-iters", "--lr", "--momentum", "--pca-dim",
                             "--shuffle-buffer", "--sobel", "--weight-decay", "--variant", "--features"},
    "bigan": COMMON | {"--beta1", "--beta2", "--crop", "--d-width", "--decay-epochs", "--final-lr-mult",
                       "--g-width", "--gen-size", "--head-width", "--linear-decay", "--lr", "--sample-every",
                       "--weight-decay", "--z-dim", "--variant"},
    "monogan": COMMON | {"--beta1", "--beta2", "--critic-norm", "--g-width", "--gp-weight", "--lr", "--n-critic",
                         "--sample-every", "--z-dim", "--variant"},
    "supervised": COMMON - {"--shards"} | {"--arch", "--data", "--dataset", "--eval-batches", "--freeze", "--gamma",
                                           "--init-from", "--lr", "--milestones", "--momentum", "--size",
                                           "--weight-decay", "--frontend", "--skip-bad-images", "--init-layers"},
    "random_init": {"--arch", "--out", "--seed", "--sobel"},
    "simclr": COMMON | {"--arch", "--temperature", "--lr"},
    "dino": COMMON | {"--arch", "--local-crops", "--teacher-temp", "--student-temp", "--ema", "--center-momentum"},
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_config_equals_the_command_with_no_options(name):
    mod = importlib.import_module(f"train.{name}")
    assert parse_config(mod.Config, []) == mod.Config()


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_option_users_call_exists(name):
    mod = importlib.import_module(f"train.{name}")
    names = {o for p in mod.cli.params for o in p.opts}
    assert OPTIONS[name] <= names, OPTIONS[name] - names


def test_lists_and_flags_parse_into_the_config():
    from train import bigan, supervised

    cfg = parse_config(supervised.Config, ["--milestones", "5,2", "--freeze", "conv1,conv2", "--amp", "off",
                                              "--channels-last"])
    assert cfg.milestones == (5, 2) and cfg.freeze == ("conv1", "conv2") and cfg.amp == "off" and cfg.channels_last
    assert parse_config(bigan.Config, ["--final-lr-mult", "0.5", "--linear-decay"]).final_lr_mult == 0.5


@pytest.mark.parametrize("args,needle", [(["--lr", "-1"], "--lr"), (["--batch-size", "0"], "--batch-size"),
                                         (["--momentum", "1.5"], "--momentum"), (["--milestones", "a,b"], "--milestones")])
def test_out_of_range_values_are_refused_by_the_parser(tmp_path, args, needle):
    from train import rotnet

    r = CliRunner().invoke(rotnet.cli, ["--shards", str(tmp_path), "--out", str(tmp_path / "r"), *args])
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r").exists()


def test_a_missing_shards_option_is_named(tmp_path):
    from train import rotnet

    r = CliRunner().invoke(rotnet.cli, ["--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and "--shards is missing" in r.output and not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_numbers_are_refused(tmp_path, value):
    from train import rotnet

    r = CliRunner().invoke(rotnet.cli, ["--shards", str(tmp_path), "--out", str(tmp_path / "r"), "--lr", value])
    assert r.exit_code == 2 and "--lr" in r.output and "finite" in r.output


def test_the_old_amp_flags_still_work():
    from train import rotnet

    assert parse_config(rotnet.Config, ["--no-amp"]).amp == "off"
    assert parse_config(rotnet.Config, ["--amp"]).amp == "cuda"      # the old flag: bf16 on CUDA
    assert parse_config(rotnet.Config, ["--amp", "on"]).amp == "on"
