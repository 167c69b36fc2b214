"""The reproduction pipeline (`make repro-cpu`) end to end at a toy budget."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from probe import repro


def tiny_cifar(root, per_class=12):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for c, colour in enumerate([(200, 40, 40), (40, 40, 200)]):
            d = os.path.join(root, split, f"class{c}")
            os.makedirs(d)
            for i in range(n):
                img = np.clip(np.array(colour) + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(d, f"{i:04d}.jpg"))
    return root


def toy_source(tmp_path):
    """A smooth 120 x 90 gradient image standing in for Image B."""
    src = tmp_path / "src.png"
    yy, xx = np.mgrid[0:90, 0:120]
    Image.fromarray(np.stack([xx * 2, yy * 2, (xx + yy)], -1).astype(np.uint8)).save(src)
    return src


def test_toy_pipeline_writes_results_and_resumes(tmp_path):
    src, cifar = toy_source(tmp_path), tiny_cifar(str(tmp_path / "cifar"))
    out = tmp_path / "results.md"
    args = ["--images", str(tmp_path), "--image", str(src), "--cifar", cifar, "--work", str(tmp_path / "w"),
            "--out", str(out), "--count", "32", "--batch-size", "8", "--train-minutes", "0.001",
            "--probe-epochs", "1", "--workers", "0", "--no-rotnet"]
    r = CliRunner().invoke(repro.cli, args)
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "| Method |" in text and "conv4 (paper)" in text
    for label in ("Fully supervised", "Random", "MonoGAN"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        ours = [float(c) for c in cells[0::2]]          # measured accuracies, conv1..conv4
        assert len(ours) == 4 and all(0 <= a <= 100 for a in ours)
    assert "Does the paper's ordering hold?" in text and "MonoGAN" in text.split("ordering hold?")[1]
    assert (tmp_path / "results.png").stat().st_size > 1000
    # resumable: a second run skips every finished step and rewrites the same table
    done = sorted(os.listdir(tmp_path / "w" / "done"))
    r = CliRunner().invoke(repro.cli, args)
    assert r.exit_code == 0, r.output
    assert r.output.count("skipped") == len(done)
    assert json.loads((tmp_path / "w" / "done" / done[0]).read_text())["seconds"] > 0


def test_missing_cifar_is_one_clear_error(tmp_path):
    r = CliRunner().invoke(repro.cli, ["--images", str(tmp_path), "--cifar", str(tmp_path / "nope.tar.gz"),
                                       "--work", str(tmp_path / "w")])
    assert r.exit_code == 1 and "CIFAR-10 not found" in r.output


def test_ablation_plan_renders_table1_cells_and_reuses_the_full_set():
    cfg = repro.ReproConfig(images="imgs", cifar="c", work="w", count=100, ablation_seconds=60)
    plan = repro.ablation_plan(cfg, "data")
    renders = {name: argv for name, argv, _ in plan if name.startswith("render")}
    # seven renders: cell (j) "All" trains on the main Image B set, rendered once for Table 3
    assert len(renders) == 7 and "render (j) All" not in renders
    flags = {name.removeprefix("render "): {a for a in argv if a.startswith("--no-")} for name, argv in renders.items()}
    assert flags["(c) No aug."] == {"--no-scale", "--no-rotation", "--no-jitter"}
    assert flags["(f) Scale"] == {"--no-rotation", "--no-jitter"}
    assert flags["(i) Jitter & scale"] == {"--no-rotation"}
    trains = [argv for name, argv, _ in plan if name.startswith("train")]
    assert len(trains) == 8 and all(a[a.index("--time-budget") + 1] == "60" for a in trains)
    assert any(os.path.join("w", "sets", "B-cifar") in a for a in trains)
    assert len([r for _, _, r in plan if r]) == 8


@pytest.mark.slow
def test_toy_ablation_adds_table1_to_the_same_results(tmp_path):
    src, cifar = toy_source(tmp_path), tiny_cifar(str(tmp_path / "cifar"))
    out = tmp_path / "results.md"
    r = CliRunner().invoke(repro.cli, [
        "--images", str(tmp_path), "--image", str(src), "--cifar", cifar, "--work", str(tmp_path / "w"),
        "--out", str(out), "--count", "32", "--batch-size", "8", "--train-minutes", "0.001",
        "--ablation-minutes", "0.001", "--probe-epochs", "1", "--workers", "0", "--no-rotnet", "--ablation"])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "## Table 3 layout" in text and "## Table 1 layout" in text
    table1 = text.split("## Table 1 layout")[1]
    for label in ["(a) Fully sup.", "(b) Random feat.", *repro.ABLATION_CELLS]:
        assert f"| {label} |" in table1, label
