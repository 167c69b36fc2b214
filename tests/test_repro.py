"""The reproduction pipeline (`make repro-cpu`) end to end at a toy budget."""
import json
import os
import re

import numpy as np
import pytest
import click
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
            "--out", str(out), "--count", "48", "--batch-size", "8", "--train-minutes", "0.001",
            "--probe-epochs", "1", "--workers", "0", "--no-rotnet"]   # 6 batches: one generator step per epoch
    r = CliRunner().invoke(repro.cli, args)
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "| Row (trained on) |" in text and "conv4 (paper)" in text
    for label in (repro.SUPERVISED, repro.RANDOM, "MonoGAN (src.png)"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        ours = [float(c) for c in cells[1:9:2]]          # measured accuracies, conv1..conv4
        assert len(ours) == 4 and all(0 <= a <= 100 for a in ours)
    # another source image than Image B: its rows have no paper value beside them
    mono = next(line for line in text.splitlines() if line.startswith("| MonoGAN (src.png) |"))
    assert mono.count("| – |") == 4 and "no row for this setting" in mono
    sup = next(line for line in text.splitlines() if line.startswith(f"| {repro.SUPERVISED} |"))
    assert re.search(r"\d+ epochs? \(\d+ steps\)", sup) and "66.5" in sup and "converged" in sup
    assert "Does the paper's ordering hold?" in text and "MonoGAN" in text.split("ordering hold?")[1]
    # protocol facts come from the runs: the probe's epochs and counts, the training budget as logged
    probes = text.split("## The probes")[1].split("##")[0]
    assert "| 1 |" in probes and "24 / 12" in probes
    trained = text.split("## What each row trained")[1].split("##")[0]
    assert "0.06 s" in trained and "train.monogan" in trained and "48 patches of S = 32" in trained
    # the pipeline's default precision: bf16 where this CPU has it natively, else fp32 (said in one line)
    import torch

    from train.run import amp_dtype
    expected = "bf16" if amp_dtype(torch.device("cpu"), "on")[0] else "fp32"
    assert all(f"| {expected} |" in line for line in trained.splitlines() if line.startswith("| MonoGAN"))
    assert f"| {expected} |" in probes
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
    trains = {name.removeprefix("train MonoGAN "): argv for name, argv, _ in plan if name.startswith("train")}
    # eight cells plus a second training seed of (j), all on the same budget
    assert len(trains) == 9 and all(a[a.index("--time-budget") + 1] == "60" for a in trains.values())
    full_set = os.path.join("w", "sets", "B-cifar")
    assert full_set in trains["(j) All"] and full_set in trains[repro.SEED_CELL]
    seeds = {k: a[a.index("--seed") + 1] for k, a in trains.items()}
    assert seeds[repro.SEED_CELL] == "1" and {v for k, v in seeds.items() if k != repro.SEED_CELL} == {"0"}
    outs = [a[a.index("--out") + 1] for a in trains.values()]
    assert len(set(outs)) == 9
    assert len({r for _, _, r in plan if r}) == 9


def test_main_effects_of_the_papers_table1():
    eff = repro.main_effects(repro.PAPER_T1)
    # scale at conv1: mean of (f, h, i, j) minus mean of (c, d, e, g)
    assert eff["scale"][0] == pytest.approx((67.9 + 67.6 + 68.1 + 68.1) / 4 - (57.9 + 58.9 + 61.4 + 64.9) / 4)
    # jitter at conv4: mean of (d, g, i, j) minus mean of (c, e, f, h)
    assert eff["jitter"][3] == pytest.approx((49.8 + 53.4 + 62.4 + 63.5) / 4 - (47.8 + 47.5 + 59.1 + 60.7) / 4)
    assert max(eff, key=lambda a: eff[a][0] + eff[a][1]) == "scale"
    assert repro.main_effects({"(c) No aug.": [50.0] * 4}) is None


def fake_table1(boost: str, noise: float):
    """Table 1 rows where only `boost` (scale/rotation/jitter) adds 5 points, plus a seed-shifted (j)."""
    k = repro.AUGMENTATIONS.index(boost)
    rows = {c: [50.0 + 5.0 * flags[k]] * 4 for c, flags in repro.ABLATION_CELLS.items()}
    rows[repro.SEED_CELL] = [v + noise for v in rows["(j) All"]]
    rows["(b) Random feat."] = [49.0] * 4
    return rows


def test_ablation_verdict_names_the_largest_effect_and_the_noise():
    text = repro.ablation_verdict(fake_table1("scale", noise=1.0))
    assert "**scale**" in text and "as in the paper" in text
    assert "1.0 / 1.0 / 1.0 / 1.0" in text           # seed spread per layer
    assert "| rotation | +0.0 *within noise* |" in text and "| scale | +5.0 | " in text
    text = repro.ablation_verdict(fake_table1("jitter", noise=8.0))
    assert "**jitter**" in text and "does **not** show" in text
    assert "| jitter | +5.0 *within noise* |" in text
    assert "no verdict" in repro.ablation_verdict({"(j) All": [50.0] * 4})


def test_results_with_ablation_have_table1_verdict_and_figure(tmp_path):
    cfg = repro.ReproConfig(images="imgs", cifar="c", work=str(tmp_path / "w"), out=str(tmp_path / "r.md"),
                            ablation=True)
    main_rows = {repro.SUPERVISED: [60.0] * 4, repro.RANDOM: [49.0] * 4, repro.MONOGAN: [55.0] * 4}
    abl = {k: v for k, v in fake_table1("scale", 0.5).items() if k != "(b) Random feat."}
    repro.write_results(cfg, main_rows, abl, {"train MonoGAN": {"seconds": 600.0, "commit": "abc1234"},
                                              "probe MonoGAN": {"seconds": 170.0}})
    text = (tmp_path / "r.md").read_text()
    table1 = text.split("## Table 1 layout")[1]
    assert "| (a) Fully sup. | 60.0 | 66.5 |" in table1 and "| (b) Random feat. | 49.0 | 57.8 |" in table1
    assert f"| {repro.SEED_CELL} | 55.5 | – |" in table1
    assert "### What Table 1 claims, checked" in table1 and "**scale**" in table1
    assert "| train MonoGAN | 600 | abc1234 | not recorded |" in text
    assert "| probe MonoGAN | 170 | not recorded | not recorded |" in text
    assert "make repro-ablation-cpu" in text
    assert (tmp_path / "r-ablation.png").stat().st_size > 1000 and (tmp_path / "r.png").stat().st_size > 1000


@pytest.mark.slow
def test_toy_ablation_adds_table1_to_the_same_results(tmp_path):
    src, cifar = toy_source(tmp_path), tiny_cifar(str(tmp_path / "cifar"))
    out = tmp_path / "results.md"
    r = CliRunner().invoke(repro.cli, [
        "--images", str(tmp_path), "--image", str(src), "--cifar", cifar, "--work", str(tmp_path / "w"),
        "--out", str(out), "--count", "48", "--batch-size", "8", "--train-minutes", "0.001",
        "--ablation-minutes", "0.001", "--probe-epochs", "1", "--workers", "0", "--no-rotnet", "--ablation"])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "## Table 3 layout" in text and "## Table 1 layout" in text
    table1 = text.split("## Table 1 layout")[1]
    for label in ["(a) Fully sup.", "(b) Random feat.", *repro.ABLATION_CELLS, repro.SEED_CELL]:
        assert f"| {label} |" in table1, label
    assert "### What Table 1 claims, checked" in table1 and "Seed spread" in table1
    assert (tmp_path / "results-ablation.png").stat().st_size > 1000


def test_a_step_done_with_other_arguments_is_not_silently_reused(tmp_path):
    cfg = repro.ReproConfig(images="imgs", cifar="c", work=str(tmp_path / "w"))
    marker = repro._done_path(cfg, "train MonoGAN")
    os.makedirs(os.path.dirname(marker))
    with open(marker, "w") as f:
        json.dump({"name": "train MonoGAN", "argv": ["train.monogan", "--time-budget", "600"], "seconds": 600.0}, f)
    assert repro.step(cfg, "train MonoGAN", ["train.monogan", "--time-budget", "600"], "")["seconds"] == 600.0
    with pytest.raises(click.ClickException, match=r"other arguments \(--time-budget: 600 -> 1800\).* new --work folder"):
        repro.step(cfg, "train MonoGAN", ["train.monogan", "--time-budget", "1800"], "")
    with pytest.raises(click.ClickException, match=r"\(--amp: \(none\) -> on; --channels-last: \(none\) -> \(flag\)\)"):
        repro.step(cfg, "train MonoGAN", ["train.monogan", "--time-budget", "600", "--amp", "on", "--channels-last"], "")


def test_ablation_steps_replace_the_time_budget():
    cfg = repro.ReproConfig(images="imgs", cifar="c", work="w", ablation_steps=50)
    trains = [argv for name, argv, _ in repro.ablation_plan(cfg, "data") if name.startswith("train")]
    assert all(a[a.index("--max-steps") + 1] == "50" and "--time-budget" not in a for a in trains)
    main = [argv for name, argv, _ in repro.main_plan(cfg, "data") if name.startswith("train MonoGAN")]
    assert "--time-budget" in main[0] and "--max-steps" not in main[0]


def test_rows_are_named_by_their_data_and_compared_only_with_the_same_setting():
    cfg = repro.ReproConfig(images="imgs", cifar="c", work="w")
    plan = {name: argv for name, argv, _ in repro.main_plan(cfg, "data")}
    pack = plan["pack CIFAR-10 train"]
    assert pack[:3] == ["augment", "pack", os.path.join("data", "train")] and repro.cifar_set(cfg) in pack
    rot_c, rot_b = plan[f"train {repro.ROTNET_CIFAR}"], plan[f"train {repro.ROTNET_B}"]
    assert rot_c[rot_c.index("--shards") + 1] == repro.cifar_set(cfg)
    assert rot_b[rot_b.index("--shards") + 1] == os.path.join("w", "sets", "B-cifar")
    # the two RotNet rows differ only in their data (and run folder)
    differ = [(a, b) for a, b in zip(rot_c, rot_b) if a != b]
    assert len(rot_c) == len(rot_b) and [a for a, _ in differ] == [repro.cifar_set(cfg), repro.run_dir(cfg, repro.ROTNET_CIFAR)]
    assert repro.paper_row(cfg, repro.ROTNET_CIFAR)[0] == "RotNet"
    assert repro.paper_row(cfg, repro.ROTNET_B) is None
    assert repro.paper_row(cfg, repro.MONOGAN)[0] == "MonoGAN"
    other = repro.ReproConfig(images="imgs", cifar="c", work="w", image="mine.png")
    assert "MonoGAN (mine.png)" in repro.row_commands(other) and repro.paper_row(other, "MonoGAN (mine.png)") is None
    # each row's probe follows its training, so a stopped pipeline leaves whole rows
    names = list(plan)
    assert names.index(f"probe {repro.ROTNET_CIFAR}") == names.index(f"train {repro.ROTNET_CIFAR}") + 1


def test_methods_add_simclr_and_dino_rows_on_the_same_budget_and_probe():
    from train import dino, simclr
    from train.config import parse_config

    cfg = repro.ReproConfig(images="imgs", cifar="c", work="w", methods=("simclr", "dino"))
    plan = {name: argv for name, argv, _ in repro.main_plan(cfg, "data")}
    mono = plan[f"train {repro.MONOGAN}"]
    for label, mod, cls in (("SimCLR (Image B)", "train.simclr", simclr.Config), ("DINO (Image B)", "train.dino", dino.Config)):
        argv = plan[f"train {label}"]
        assert argv[0] == mod and argv[argv.index("--arch") + 1] == "small"
        assert argv[argv.index("--time-budget") + 1] == mono[mono.index("--time-budget") + 1]
        assert argv[argv.index("--shards") + 1] == mono[mono.index("--shards") + 1]
        probe, mono_probe = plan[f"probe {label}"], plan[f"probe {repro.MONOGAN}"]
        strip = lambda a: [x for x in a if "simclr" not in x and "dino" not in x and "monogan" not in x]
        assert strip(probe) == strip(mono_probe)
        parse_config(cls, argv[1:])  # every option it passes exists and is in range
    assert parse_config(dino.Config, plan["train DINO (Image B)"][1:]).local_crops == 2
    assert not any("SimCLR" in n for n in repro.main_plan(repro.ReproConfig(images="i", cifar="c"), "d"))
    r = CliRunner().invoke(repro.cli, ["--images", ".", "--methods", "simclr,byol"])
    assert r.exit_code == 2 and "byol" in r.output


@pytest.mark.slow
def test_toy_pipeline_with_simclr_and_dino_rows(tmp_path):
    src, cifar = toy_source(tmp_path), tiny_cifar(str(tmp_path / "cifar"))
    out = tmp_path / "results.md"
    r = CliRunner().invoke(repro.cli, [
        "--images", str(tmp_path), "--image", str(src), "--cifar", cifar, "--work", str(tmp_path / "w"),
        "--out", str(out), "--count", "48", "--batch-size", "8", "--train-minutes", "0.001",
        "--probe-epochs", "1", "--workers", "0", "--no-rotnet", "--methods", "simclr,dino"])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    for label in ("SimCLR (src.png)", "DINO (src.png)"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        assert "no row for this setting" in row
        assert f"| {label} | `train.{label.split()[0].lower()}` |" in text.split("## What each row trained")[1]
    assert "local_crops 2" in text and "out_dim 4096" in text
