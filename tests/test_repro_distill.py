"""Single-image distillation at reduced scale (`make repro-distill-cpu`): plan, rows, readings, page."""
import importlib
import json
import os

import click
import numpy as np
from click.testing import CliRunner
from PIL import Image

from repro import distill, table3
from repro.__main__ import cli
from repro.config import DistillConfig, options
from repro.stats import Spread
from tests.test_repro_table3 import tiny_cifar, toy_source


def config(args) -> DistillConfig:
    """The config the command line builds."""
    cmd = click.Command("x", params=options(DistillConfig), callback=lambda **kw: DistillConfig(**kw))
    return cmd.main([str(a) for a in args], standalone_mode=False)


def toy_args(tmp_path, *extra):
    src, cifar = toy_source(tmp_path), tiny_cifar(str(tmp_path / "cifar"))
    second = tmp_path / "second.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(second)
    return ["--images", tmp_path, "--image", src, "--second-image", second, "--cifar", cifar,
            "--work", tmp_path / "w", "--out", tmp_path / "results" / "distill.md", "--count", "48",
            "--batch-size", "8", "--steps", "4", "--stages", "2", "--teacher-steps", "2", "--workers", "0",
            "--noise-size", "120,90", *extra]


def command_params(argv):
    """What the project's command parses from a plan step's argv (the step is a real command line)."""
    if argv[0] == "augment":           # a group: its subcommand parses the rest
        from augment.__main__ import cli as augment_cli

        return augment_cli.commands[argv[1]].make_context(argv[1], list(argv[2:])).params
    return importlib.import_module(argv[0]).cli.make_context(argv[0], list(argv[1:])).params


def test_plan_shares_table3s_steps_and_stages_each_student(tmp_path):
    cfg = config(["--work", tmp_path / "w", "--steps", "900", "--stages", "3"])
    steps = distill.plan(cfg, "data")
    by = {s.name: s for s in steps}
    # the teacher and the shared sets are Table 3's steps, argv for argv: a Table 3 run is reused, never redone
    t3 = table3.plan(distill.table3_config(cfg), "data")
    for name in ("render Image B", "pack CIFAR-10 train", "train Fully supervised (CIFAR-10), seed 0"):
        assert by[name].argv == next(s for s in t3 if s.name == name).argv
    # every source and seed: three stops of one run, the later ones resuming it, the last one the budget
    students = [s for s in steps if s.name.startswith("distill")]
    assert len(students) == 4 * 2 * 3
    for source in distill.sources(cfg):
        for seed in (0, 1):
            stages = [s for s in students if s.name.startswith(f"distill {source.label}, seed {seed},")]
            params = [command_params(s.argv) for s in stages]
            assert [p["stop_at_step"] for p in params] == [300, 600, 0]
            assert [p["resume"] for p in params] == [False, True, True]
            assert {p["max_steps"] for p in params} == {900} and {p["seed"] for p in params} == {seed}
            assert {p["shards"] for p in params} == {distill.set_dir(cfg, source)}
            assert {p["teacher"] for p in params} == {distill.teacher_dir(cfg)}
    # the four sources: packed CIFAR-10, Image B (Table 3's set), Image A, and a noise image of Image B's size
    assert [s.label for s in distill.sources(cfg)] == [distill.CIFAR10.label, "Image B", "Image A", "Noise image"]
    noise = command_params(by["noise image"].argv)
    assert (noise["width"], noise["height"]) == (600, 225)
    assert command_params(by["render the noise image"].argv)["image"] == distill.noise_image(cfg)


def test_bad_options_are_one_line():
    r = CliRunner().invoke(cli, ["distill", "--stages", "5", "--steps", "3"])
    assert r.exit_code == 2 and "at most one stage per step" in r.output
    r = CliRunner().invoke(cli, ["distill", "--noise-size", "600"])
    assert r.exit_code == 2 and "WIDTH,HEIGHT" in r.output


def row(cfg, source, values):
    curves = {s: [(1, v - 1), (2, v)] for s, v in enumerate(values)}
    return distill.Student(source, Spread(tuple(values)), tuple(range(len(values))), curves, ())


def test_readings_claim_the_ordering_only_outside_the_seed_spread():
    cfg = DistillConfig()
    cifar, b, a, noise = distill.sources(cfg)
    t = distill.Teacher("t", 60.0, "x", True)
    clear = [row(cfg, cifar, [50, 52]), row(cfg, b, [40, 41]), row(cfg, a, [30, 35]), row(cfg, noise, [12, 13])]
    text = "\n".join(distill.readings(cfg, clear, t))
    assert "CIFAR-10 > Image B > noise holds outside the seed spread" in text
    assert "Image B − Noise image: +28.0 (above)" in text
    # Image B's seeds overlap CIFAR-10's: no direction, and the ordering is not claimed
    overlap = [row(cfg, cifar, [50, 52]), row(cfg, b, [44, 51]), row(cfg, a, [30, 35]), row(cfg, noise, [12, 13])]
    text = "\n".join(distill.readings(cfg, overlap, t))
    assert "within the seed spread" in text and "is not shown outside the seed spread" in text
    # the ratio to the teacher and chance, from the numbers
    assert "0.79 of the teacher's top-1" in text and "Image B: 47.5 ± 3.5, above chance" in text
    assert "disagree about the teacher" in "\n".join(distill.readings(cfg, clear, distill.Teacher("t", 60, "x", False)))


def test_toy_pipeline_trains_every_student_for_its_steps_and_the_page_shows_them(tmp_path):
    args = toy_args(tmp_path)
    r = CliRunner().invoke(cli, ["distill", *[str(a) for a in args]])
    assert r.exit_code == 0, r.output
    cfg = config(args)
    rows = distill.students(cfg)
    assert [x.source.label for x in rows] == [distill.CIFAR10.label, "src.png", "second.png", "Noise image"]
    for x in rows:
        assert x.seeds == (0, 1) and x.top1 is not None and x.top1.n == 2
        # budgets are steps: each student reached its 4, scored at the stop after 2, at the end (and at an
        # epoch's end: the packed toy CIFAR-10 has 24 images, 3 batches)
        assert [f.steps for f in x.facts] == [4, 4]
        assert all({2, 4} <= {s for s, _ in c} and c[-1][0] == 4 for c in x.curves.values())
        assert all(0 <= v <= 100 for c in x.curves.values() for _, v in c)
    t = distill.teacher(cfg)
    assert t.agree and t.top1 is not None and len(t.sha256) == 64
    # the teacher is Table 3's supervised run in the same work folder, trained here for its 2 steps
    assert json.load(open(os.path.join(cfg.work, "done", "train_Fully_supervised_(CIFAR-10),_seed_0.json")))["argv"]
    text = (tmp_path / "results" / "distill.md").read_text()
    for x in rows:
        line = next(l for l in text.splitlines() if l.startswith(f"| {x.source.label} |"))
        assert f"| {x.top1.text()} |" in line
    assert "| *the teacher* |" in text and "## Reading" in text and "| **total** | **" in text
    assert (tmp_path / "results" / "distill.png").stat().st_size > 1000
    # resumable: a second run skips every finished step
    done = sorted(os.listdir(tmp_path / "w" / "done"))
    r = CliRunner().invoke(cli, ["distill", *[str(a) for a in args]])
    assert r.exit_code == 0 and r.output.count("skipped") == len(done)
