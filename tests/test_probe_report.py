"""probe.table (Markdown in the paper's layout, paper numbers beside) and probe.figures (PNG)."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from probe import figures, table
from probe.linear import FORMAT
from probe.paper import TABLE2, TABLE3, find_row
from train.config import CommonConfig
from train.run import write_bare_checkpoint
from train.models import Encoder, EncoderSpec


def fake_result(tmp_path, name, dataset, accs, label="x", epochs=36, protocol=None):
    layers = [f"conv{i + 1}" for i in range(len(accs))]
    protocol = protocol or ("imagenet" if dataset == "imagefolder" else "cifar")
    res = {"format": FORMAT, "label": label, "dataset": dataset, "protocol": protocol, "layers": layers,
           "top1": dict(zip(layers, accs)), "top1_best": {k: v + 1 for k, v in zip(layers, accs)},
           "config": {"epochs": epochs, "schedule": "paper", "limit_train": 0},
           "resolved": {"pooling": "none"}, "checkpoint": {"method": "monogan", "sha256": "ab" * 32}}
    d = tmp_path / name
    d.mkdir()
    (d / "probe.json").write_text(json.dumps(res))
    return str(d)


def test_paper_rows_are_found():
    assert find_row("table2", "(p)").columns["imagenet"][1] == 31.5
    assert find_row("table3", "MonoGAN").columns["cifar100"][0] == 39.9
    assert len(TABLE2) == 20 and all(len(r.columns["imagenet"]) == 5 for r in TABLE2.values())
    assert find_row("table3", "nonsense") is None and len(TABLE3) == 6


def test_table3_layout_with_paper_beside(tmp_path):
    a = fake_result(tmp_path, "a", "cifar10", [60.0, 61.0, 62.0, 63.0])
    b = fake_result(tmp_path, "b", "cifar100", [30.0, 31.0, 32.0, 33.0])
    c = fake_result(tmp_path, "c", "cifar10", [50.0, 50.0, 50.0, 50.0], epochs=4)
    out = tmp_path / "t.md"
    r = CliRunner().invoke(table.main, [a, b, c, "--paper", "table3", "--label", "mono=MonoGAN",
                                        "--label", "mono=MonoGAN", "--label", "mine", "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    header, _, mono, mine = text.splitlines()[:4]
    assert header.count("CIFAR-10 conv") == 4 and header.count("CIFAR-100 conv") == 4
    assert mono.startswith("| mono |") and "60.0 (68.1)" in mono and "33.0 (38.8)" in mono
    assert mine.startswith("| mine |") and "50.0" in mine and "(" not in mine
    assert "shortened" in text and "no table3 row matched: mine" in text


def test_table_best_metric_and_errors(tmp_path):
    a = fake_result(tmp_path, "a", "imagefolder", [10.0, 20.0, 30.0, 40.0, 50.0], label="p")
    r = CliRunner().invoke(table.main, [a, "--metric", "best", "--paper", "table2", "--out", "-"])
    assert r.exit_code == 0 and "11.0 (20.7)" in r.output and "DeepCluster mono, Image A" in r.output
    folder = fake_result(tmp_path, "f", "imagefolder", [60.0, 61.0, 62.0, 63.0], label="MonoGAN", protocol="cifar")
    r = CliRunner().invoke(table.main, [folder, "--paper", "table3", "--out", "-"])
    assert r.exit_code == 0 and "60.0 (68.1)" in r.output  # a 32x32 folder stands for CIFAR-10
    r = CliRunner().invoke(table.main, [folder, "--paper", "table2", "--out", "-"])
    assert r.exit_code == 0 and "60.0 |" in r.output and "(" not in r.output.splitlines()[2]
    r = CliRunner().invoke(table.main, [a, "--label", "one", "--label", "two", "--out", "-"])
    assert r.exit_code == 1 and "--label given 2 times" in r.output
    (tmp_path / "junk.json").write_text("{}")
    r = CliRunner().invoke(table.main, [str(tmp_path / "junk.json")])
    assert r.exit_code == 1 and "not a probe.json" in r.output


def test_filter_grid_normalises_each_filter():
    w = np.random.default_rng(0).normal(size=(96, 3, 11, 11)) * np.arange(1, 97)[:, None, None, None]
    grid = figures.filter_grid(w)
    assert grid.shape == (8 * (11 + 1) + 1, 12 * (11 + 1) + 1, 3)
    tile = grid[1:12, 1:12]  # first filter, back from (0, 1) display range
    assert tile.min() == pytest.approx(0.0) and tile.max() == pytest.approx(1.0)
    tile_last = grid[1 + 7 * 12:12 + 7 * 12, 1 + 11 * 12:12 + 11 * 12]
    assert tile_last.min() == pytest.approx(0.0) and tile_last.max() == pytest.approx(1.0)
    assert figures.filter_grid(np.zeros((2, 2, 3, 3))).shape[:2] == (5, 12 * 7 + 1)


def test_filters_and_layers_pngs(tmp_path):
    ck = str(tmp_path / "ck.pt")
    write_bare_checkpoint(ck, method="rotnet", cfg=CommonConfig(), encoder=Encoder(EncoderSpec(arch="alexnet")))
    r = CliRunner().invoke(figures.cli, ["filters", ck, "--out", str(tmp_path / "f.png")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "f.png").size[0] > 100
    sup = fake_result(tmp_path, "sup", "cifar10", [66.0, 70.0, 72.0, 75.0], label="supervised")
    mono = fake_result(tmp_path, "mono", "cifar10", [68.0, 72.0, 70.0, 63.0], label="mono")
    r = CliRunner().invoke(figures.cli, ["layers", sup, mono, "--supervised", "supervised",
                                         "--out", str(tmp_path / "l.png")])
    assert r.exit_code == 0, r.output
    w, h = Image.open(tmp_path / "l.png").size
    assert w > 1.5 * h  # two panels side by side
    r = CliRunner().invoke(figures.cli, ["layers", mono, "--supervised", "nobody"])
    assert r.exit_code == 1 and "--supervised nobody" in r.output


def test_layers_from_paper_only(tmp_path):
    out = str(tmp_path / "fig6.png")
    r = CliRunner().invoke(figures.cli, ["layers", "--paper", "table2", "--paper-rows", "a,f,k,p",
                                         "--supervised", "a", "--out", out])
    assert r.exit_code == 0, r.output and os.path.isfile(out)
