"""Table 3 and Table 1 (`make repro-cpu`, `make repro-ablation-cpu`): plans, rows, readings and pages."""
import json
import os

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from repro import records, stats, table1, table3
from repro.__main__ import cli
from repro.config import STEPS, ReproConfig
from repro.stats import Spread
from repro.steps import Step, argv_change, done_path, run_step


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


def toy_args(tmp_path, *extra):
    src, cifar = toy_source(tmp_path), tiny_cifar(str(tmp_path / "cifar"))
    return ["--images", str(tmp_path), "--image", str(src), "--cifar", cifar, "--work", str(tmp_path / "w"),
            "--out", str(tmp_path / "results" / "table3.md"), "--count", "48", "--batch-size", "8",
            "--steps", "2", "--probe-epochs", "1", "--workers", "0", *extra]


def config(tmp_path, args) -> ReproConfig:
    """The config the command line builds (what the command ran with)."""
    cmd = click.Command("x", params=__import__("repro.config", fromlist=["options"]).options(ReproConfig),
                        callback=lambda **kw: ReproConfig(**kw))
    return cmd.main(args, standalone_mode=False)


def test_toy_pipeline_rows_have_every_seed_and_the_page_shows_them(tmp_path):
    args = toy_args(tmp_path, "--no-rotnet")
    r = CliRunner().invoke(cli, ["table3", *args])
    assert r.exit_code == 0, r.output
    cfg = config(tmp_path, args)
    rows = {row.label: row for row in table3.rows(cfg)}
    assert set(rows) == {table3.RANDOM, "MonoGAN (src.png)", table3.SUPERVISED}
    for row in rows.values():
        assert row.seeds == (0, 1) and all(s is not None and s.n == 2 for s in row.layers)
        assert all(0 <= v <= 100 for s in row.layers for v in s.values)
    # budgets are steps: every trained seed reached exactly its 2 steps, whatever the machine's load
    for label in ("MonoGAN (src.png)", table3.SUPERVISED):
        assert [f.steps for f in rows[label].facts] == [2, 2] and not any(f.short for f in rows[label].facts)
        assert {f.config["seed"] for f in rows[label].facts} == {0, 1}
    # another source image than Image B: its rows have no paper value; supervised has the paper's
    assert rows["MonoGAN (src.png)"].paper is None and rows[table3.SUPERVISED].paper[0] == 66.5
    # the page shows those rows: each cell is the row's mean ± half-range
    text = (tmp_path / "results" / "table3.md").read_text()
    for row in rows.values():
        line = next(l for l in text.splitlines() if l.startswith(f"| {row.label} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == "2" and cells[3] == row.layers[0].text() and cells[5] == row.layers[1].text()
    assert "Seeds: 0, 1 (2 per trained row)" in text and "## Reading" in text
    assert "MonoGAN (src.png) vs Random: conv1" in text
    assert "| **total** | **" in text
    assert (tmp_path / "results" / "table3.png").stat().st_size > 1000
    # resumable: a second run skips every finished step
    done = sorted(os.listdir(tmp_path / "w" / "done"))
    r = CliRunner().invoke(cli, ["table3", *args])
    assert r.exit_code == 0 and r.output.count("skipped") == len(done)


def test_every_trained_row_gets_its_methods_step_budget_and_each_seed_its_own_run():
    cfg = ReproConfig(images="imgs", cifar="c", work="w", train_minutes=0)
    plan = {s.name: list(s.argv) for s in table3.plan(cfg, "data")}
    for spec in table3.row_specs(cfg):
        outs = []
        for seed in (0, 1):
            if spec.method == "random":
                argv = plan[f"init {spec.label}, seed {seed}"]
            else:
                argv = plan[f"train {spec.label}, seed {seed}"]
                assert argv[argv.index("--max-steps") + 1] == str(STEPS[spec.method]), spec.label
                assert "--epochs" not in argv and "--time-budget" not in argv   # the recipe's epochs plan the schedule
            assert argv[argv.index("--seed") + 1] == str(seed)
            outs.append(argv[argv.index("--out") + 1])
            names = list(plan)
            assert names.index(f"probe {spec.label}, seed {seed}") == names.index(
                next(n for n in names if n.endswith(f"{spec.label}, seed {seed}") and not n.startswith("probe"))) + 1
        assert len(set(outs)) == 2
    capped = {s.name: s.argv for s in table3.plan(ReproConfig(images="i", cifar="c", steps=40, monogan_steps=7), "d")}
    mono = capped["train MonoGAN (Image B), seed 0"]
    assert mono[mono.index("--max-steps") + 1] == "7" and mono[mono.index("--time-budget") + 1] == "1800"
    sup = capped[f"train {table3.SUPERVISED}, seed 1"]
    assert sup[sup.index("--max-steps") + 1] == "40"


def test_rows_are_named_by_their_data_and_compared_only_with_the_same_setting():
    cfg = ReproConfig(images="imgs", cifar="c", work="w")
    plan = {s.name: list(s.argv) for s in table3.plan(cfg, "data")}
    assert plan["pack CIFAR-10 train"][:3] == ["augment", "pack", os.path.join("data", "train")]
    rot_c, rot_b = plan[f"train {table3.ROTNET_CIFAR}, seed 0"], plan[f"train {table3.ROTNET_B}, seed 0"]
    assert rot_c[rot_c.index("--shards") + 1] == table3.cifar_set(cfg)
    assert rot_b[rot_b.index("--shards") + 1] == os.path.join("w", "sets", "B-cifar")
    differ = [a for a, b in zip(rot_c, rot_b) if a != b]
    assert differ == [table3.cifar_set(cfg), table3.run_dir(cfg, table3.ROTNET_CIFAR, 0)]
    assert table3.paper_values(cfg, table3.ROTNET_CIFAR)[0] == [64.4, 65.6, 65.6, 59.1]
    assert "full-data reference" in table3.paper_values(cfg, table3.ROTNET_CIFAR)[1]
    assert table3.paper_values(cfg, table3.ROTNET_B)[0] is None
    specs = {s.label: s for s in table3.row_specs(cfg)}
    assert not specs[table3.ROTNET_CIFAR].single_image and specs[table3.ROTNET_B].single_image
    other = ReproConfig(images="imgs", cifar="c", work="w", image="mine.png")
    assert table3.paper_values(other, "MonoGAN (mine.png)")[0] is None


def fake_row(label: str, per_seed: list[list[float]], single: bool = True, method: str = "monogan") -> table3.Row:
    spec = table3.RowSpec(label, method, (), single)
    return table3.Row(spec, stats.per_layer(per_seed), tuple(range(len(per_seed))), (), None, "")


def test_a_reading_never_claims_a_direction_inside_the_seed_spread():
    cfg = ReproConfig(images="i", cifar="c")
    rand = fake_row(table3.RANDOM, [[50, 50, 50, 50], [52, 52, 52, 52]], single=False, method="random")
    # conv1: 53/54 lies above 50..52; conv2: 51/55 overlaps it; conv3: 47/49 lies below
    mono = fake_row(table3.MONOGAN, [[53, 51, 47, 50], [54, 55, 49, 51]])
    text = "\n".join(table3.readings(cfg, [rand, mono]))
    assert "conv1 +2.5 (above)" in text and "conv2 +2.0 (within the seed spread)" in text
    assert "conv3 -3.0 (below)" in text and "conv4 -0.5 (within the seed spread)" in text
    one = fake_row(table3.MONOGAN, [[60, 60, 60, 60]])
    assert "no direction claimed" in "\n".join(table3.readings(cfg, [rand, one]))
    assert "Confounds" in text and "labels" in text


@pytest.mark.parametrize("a,b,want", [((3, 4), (1, 2), "above"), ((1, 2), (3, 4), "below"),
                                      ((1, 3), (2, 4), "within the seed spread"), ((5,), (1, 2), "one seed")])
def test_direction_follows_the_seed_ranges(a, b, want):
    assert stats.direction(Spread(a), Spread(b)).startswith(want)
    assert Spread((1.0, 3.0)).text() == "2.0 ± 1.0" and Spread((2.0,)).text() == "2.0"


def test_a_step_done_with_other_arguments_is_not_silently_reused(tmp_path):
    work = str(tmp_path / "w")
    marker = done_path(work, "train MonoGAN")
    os.makedirs(os.path.dirname(marker))
    with open(marker, "w") as f:
        json.dump({"name": "train MonoGAN", "argv": ["train.monogan", "--max-steps", "300"], "seconds": 60.0}, f)
    assert run_step(work, Step("train MonoGAN", ("train.monogan", "--max-steps", "300")), "")["seconds"] == 60.0
    with pytest.raises(click.ClickException, match=r"other arguments \(--max-steps: 300 -> 400\).* new --work folder"):
        run_step(work, Step("train MonoGAN", ("train.monogan", "--max-steps", "400")), "")
    assert argv_change(["a", "--x", "1"], ["a", "--x", "1", "--y"]) == "--y: (none) -> (flag)"


def test_missing_cifar_is_one_clear_error(tmp_path):
    r = CliRunner().invoke(cli, ["table3", "--images", str(tmp_path), "--cifar", str(tmp_path / "nope.tar.gz"),
                                 "--work", str(tmp_path / "w")])
    assert r.exit_code == 1 and "CIFAR-10 not found" in r.output and "Traceback" not in r.output


def test_methods_add_simclr_and_dino_rows_on_the_same_data_and_probe():
    from train import dino, simclr
    from train.config import parse_config

    cfg = ReproConfig(images="imgs", cifar="c", work="w", methods=("simclr", "dino"))
    plan = {s.name: list(s.argv) for s in table3.plan(cfg, "data")}
    mono = plan[f"train {table3.MONOGAN}, seed 0"]
    for label, mod, cls in (("SimCLR (Image B)", "train.simclr", simclr.Config),
                            ("DINO (Image B)", "train.dino", dino.Config)):
        argv = plan[f"train {label}, seed 1"]
        assert argv[0] == mod and argv[argv.index("--arch") + 1] == "small"
        assert argv[argv.index("--shards") + 1] == mono[mono.index("--shards") + 1]
        assert argv[argv.index("--max-steps") + 1] == str(STEPS[mod.split(".")[1]])
        parse_config(cls, argv[1:])  # every option it passes exists and is in range
    r = CliRunner().invoke(cli, ["table3", "--images", ".", "--methods", "simclr,byol"])
    assert r.exit_code == 2 and "byol" in r.output


def test_ablation_plan_renders_seven_cells_and_trains_nine_runs_on_one_budget():
    cfg = ReproConfig(images="imgs", cifar="c", work="w", count=100, ablation_steps=50)
    plan = table1.plan(cfg, "data")
    renders = {s.name: s.argv for s in plan if s.name.startswith("render (")}
    assert len(renders) == 7 and "render (j) All" not in renders
    flags = {n.removeprefix("render "): {a for a in argv if a.startswith("--no-")} for n, argv in renders.items()}
    assert flags["(c) No aug."] == {"--no-scale", "--no-rotation", "--no-jitter"}
    assert flags["(i) Jitter & scale"] == {"--no-rotation"}
    trains = {s.name: s.argv for s in plan if s.name.startswith("train")}
    assert len(trains) == 9 and all(a[a.index("--max-steps") + 1] == "50" for a in trains.values())
    assert all(a[0] == "train.monogan" for a in trains.values())
    full_set = os.path.join("w", "sets", "B-cifar")
    j = [a for n, a in trains.items() if "(j)" in n]
    assert len(j) == 2 and all(full_set in a for a in j) and {a[a.index("--seed") + 1] for a in j} == {"0", "1"}
    rot = table1.plan(ReproConfig(images="i", cifar="c", work="w", ablation_method="rotnet"), "data")
    assert all(s.argv[0] == "train.rotnet" for s in rot if s.name.startswith("train"))
    assert len({s.outputs for s in plan}) == len(plan)


def test_main_effects_of_the_papers_table1():
    eff = table1.main_effects({k: table1.TABLE1[k].columns["cifar10"] for k in table1.CELLS})
    assert eff["scale"][0] == pytest.approx((67.9 + 67.6 + 68.1 + 68.1) / 4 - (57.9 + 58.9 + 61.4 + 64.9) / 4)
    assert eff["jitter"][3] == pytest.approx((49.8 + 53.4 + 62.4 + 63.5) / 4 - (47.8 + 47.5 + 59.1 + 60.7) / 4)
    assert table1.main_effects({"c": [50.0] * 4}) is None


def fake_cells(boost: str, gap: float) -> list[table1.Cell]:
    """Cells where only ``boost`` adds 5 points; cell (j) has a second seed ``gap`` higher."""
    k = table1.AUGMENTATIONS.index(boost)
    out = []
    for key, flags in table1.CELLS.items():
        v = 50.0 + 5.0 * flags[k]
        per_seed = [[v] * 4, [v + gap] * 4] if key == "j" else [[v] * 4]
        out.append(table1.Cell(key, table1.cell_label(key), stats.per_layer(per_seed), tuple(range(len(per_seed))),
                               (), table1.TABLE1[key].columns["cifar10"]))
    return out


def test_ablation_reading_names_the_effects_against_the_seed_gap():
    cfg = ReproConfig(images="i", cifar="c")
    lines, effects = table1.readings(cfg, fake_cells("scale", gap=1.0))
    text = "\n".join(lines)
    assert effects["scale"] == [5.0] * 4 and effects["rotation"] == [0.0] * 4
    assert "scale (cells with it minus cells without, seed 0): conv1 +5.0 (up)" in text
    assert "rotation (cells with it minus cells without, seed 0): conv1 +0.0 (within the seed spread)" in text
    assert "largest conv1/conv2 effect is scale" in text and "exceeds the others" in text
    lines, _ = table1.readings(cfg, fake_cells("jitter", gap=8.0))
    assert "conv1 +5.0 (within the seed spread)" in "\n".join(lines) and "within the seed spread." in lines[-2]


def test_packed_and_rendered_sets_by_what_their_manifests_say(tmp_path):
    """A real rendered one-image set is single-image; a real packed dataset never is (augment pack)."""
    from augment.__main__ import cli as augment_cli
    from tests.toyset import make_toy_set

    rendered = make_toy_set(str(tmp_path / "toy"), count=8, size=16, per_shard=8)
    cifar = tiny_cifar(str(tmp_path / "cifar"), per_class=2)
    r = CliRunner().invoke(augment_cli, ["pack", os.path.join(cifar, "train"), "--out", str(tmp_path / "packed")])
    assert r.exit_code == 0, r.output
    assert records.is_single_image({"config": {"shards": rendered}})
    assert not records.is_single_image({"config": {"shards": str(tmp_path / "packed")}})
    assert not records.is_single_image({"config": {"data": "folder"}})
