"""Tables 4 and 5 (`make repro-finetune-cpu`, probe.finetune) and the top-1 evaluation (probe.top1), on toy data."""
import json
import os
import shutil

import click
import pytest
import torch
from click.testing import CliRunner

from probe import finetune as ft
from probe import repro
from probe.top1 import Top1Config, block_digests, run_top1
from tests.test_repro import tiny_cifar
from tests.toyset import make_toy_set
from train import monogan, random_init, rotnet, supervised
from train.checkpoint import load_checkpoint, save_checkpoint
from train.config import parse_config
from train.models import ARCHS, Encoder, EncoderSpec
from train.run import write_bare_checkpoint

FAST = ["--batch-size", "8", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Tiny CIFAR-like folder, a one-image shard set, and the checkpoints the tables start from."""
    root = tmp_path_factory.mktemp("ft")
    cifar = tiny_cifar(str(root / "cifar"))
    shards = make_toy_set(str(root / "set"), count=32, size=32, per_shard=16)
    random_init.main(random_init.Config(out=str(root / "random"), arch="small", seed=0))
    supervised.main(parse_config(supervised.Config, ["--data", cifar, "--arch", "small", "--out", str(root / "sup"),
                                                     "--max-steps", "2", *FAST]))
    rotnet.main(parse_config(rotnet.Config, ["--shards", shards, "--arch", "small", "--crop", "28",
                                             "--out", str(root / "rot"), "--max-steps", "1", *FAST]))
    monogan.main(parse_config(monogan.Config, ["--shards", shards, "--out", str(root / "gan"), "--max-steps", "1",
                                               "--n-critic", "1", *FAST]))
    scat = str(root / "scat" / "checkpoint.pt")   # an encoder whose conv1-2 are the scattering frontend
    write_bare_checkpoint(scat, method="supervised", cfg=supervised.Config(arch="small"),
                          encoder=Encoder(EncoderSpec(arch="small", frontend="scattering", frontend_size=32)))
    images = root / "images"
    images.mkdir()
    for name in ("content.png", "style.png"):
        shutil.copyfile(str(root / "cifar" / "train" / "class0" / "0000.jpg"), str(images / name))
    paths = {k: str(root / k / "checkpoint.pt") for k in ("random", "sup", "rot", "gan")}
    return {"root": root, "cifar": cifar, "images": str(images), "scat": scat, **paths}


def config(toy, work, **kw) -> ft.FinetuneConfig:
    base = dict(images=toy["images"], cifar=toy["cifar"], work=str(work), out=str(work / "r.md"),
                checkpoints=(("MonoGAN", toy["gan"]), ("RotNet", toy["rot"])), supervised=toy["sup"],
                random=toy["random"], retrain_steps=7, retrain_seconds=60, scattering_seconds=300, finetune_steps=9,
                finetune_seconds=90, probe_epochs=3, content="content.png", style="style.png")
    return ft.FinetuneConfig(**(base | kw))


def argv_of(plan, name):
    return dict(plan.steps)[name]


def opt(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


def test_plan_retrains_each_given_checkpoint_with_conv1_2_frozen(toy, tmp_path):
    plan, controls = ft.prepare_plan(config(toy, tmp_path))
    t4 = [r.label for r in plan.table4]
    assert t4 == ["Full sup.", "Random", "Random, seed +1", "Random, no normalisation, leaky ReLU", "Scattering",
                  "MonoGAN", "RotNet"]
    src = {"Full sup.": toy["sup"], "Random": toy["random"], "Random, seed +1": toy["random"],
           "MonoGAN": toy["gan"], "RotNet": toy["rot"], controls[0].label: controls[0].path}
    for label in t4:
        a, top = argv_of(plan, f"table4 retrain {label}"), argv_of(plan, f"table4 top-1 {label}")
        assert opt(a, "--max-steps") == "7" and opt(a, "--seed") == ("1" if label.endswith("+1") else "0")
        if label == "Scattering":
            assert opt(a, "--frontend") == "scattering" and "--init-from" not in a and "--freeze" not in a
            assert opt(a, "--time-budget") == "300" and "--frozen-from" not in top
        else:
            got = (opt(a, "--init-from"), opt(a, "--init-layers"), opt(a, "--freeze"))
            assert got == (src[label], "conv1,conv2", "conv1,conv2")
            assert opt(a, "--time-budget") == "60" and opt(top, "--frozen-from") == src[label]
    # the MonoGAN critic's network (no norm, leaky ReLU) gets its own random control; RotNet's is Random's
    assert [c.spec["norm"] for c in controls] == ["none"]
    assert [r.ref for r in plan.table4 if r.label in ("MonoGAN", "RotNet")] == [controls[0].label, "Random"]
    assert [r.ref for r in plan.table5 if r.label in ("MonoGAN", "RotNet")] == [
        "Full sup., no normalisation, leaky ReLU", "Full sup."]
    assert len({r.run for r in plan.table4 + plan.table5}) == len(plan.table4) + len(plan.table5)


def test_plan_fine_tunes_everything_for_table5_and_probes_every_layer(toy, tmp_path):
    cfg = config(toy, tmp_path)
    plan, controls = ft.prepare_plan(cfg)
    assert [r.label for r in plan.table5] == ["Full sup.", "Full sup., seed +1",
                                              "Full sup., no normalisation, leaky ReLU", "MonoGAN", "RotNet"]
    inits = {"Full sup.": None, "Full sup., seed +1": None, "MonoGAN": toy["gan"], "RotNet": toy["rot"],
             "Full sup., no normalisation, leaky ReLU": controls[0].path}
    for row in plan.table5:
        a = argv_of(plan, f"table5 fine-tune {row.label}")
        assert "--freeze" not in a and opt(a, "--init-from") == inits[row.label]
        assert opt(a, "--seed") == str(cfg.seed + (row.label == "Full sup., seed +1"))
        assert opt(a, "--max-steps") == "9" and opt(a, "--time-budget") == "90"
        p = argv_of(plan, f"table5 probe {row.label}")
        assert p[0] == "probe.linear" and opt(p, "--checkpoint") == os.path.join(row.run, "checkpoint.pt")
        assert (opt(p, "--epochs"), opt(p, "--protocol"), opt(p, "--out")) == ("3", "cifar", row.result)
        assert "--layers" not in p                                   # every conv layer
    figs = [(n, a) for n, a in plan.steps if n.startswith("fig")]
    assert len(figs) == 1 + 2 * len(ARCHS["small"])
    assert opt(figs[0][1], "--checkpoint") == toy["gan"] and opt(figs[0][1], "--compare") == toy["sup"]
    for (name, a), (layer, width, *_) in zip(figs[1::2], ARCHS["small"]):
        units = [int(u) for u in opt(a, "--units").split(",")]
        assert opt(a, "--layer") == layer and len(set(units)) == 4 and all(0 <= u < width for u in units)
    lean = ft.prepare_plan(config(toy, tmp_path / "b", seed_row=False, spec_controls=False, figures=False))[0]
    assert [r.label for r in lean.table4] == ["Full sup.", "Random", "Scattering", "MonoGAN", "RotNet"]
    assert not any(n.startswith("fig") for n, _ in lean.steps) and len(lean.table5) == 3


def test_repro_runs_it_in_its_own_work_folder_in_one_line(toy, tmp_path):
    rcfg = repro.ReproConfig(images=toy["images"], cifar=toy["cifar"], work=str(tmp_path / "w"), seed=3, workers=0)
    cfg = ft.from_repro(rcfg, out=str(tmp_path / "r.md"), checkpoints=(("RotNet", toy["rot"]),),
                        supervised=toy["sup"], random=toy["random"], content="content.png", style="style.png")
    assert (cfg.work, cfg.cifar, cfg.seed, cfg.workers) == (rcfg.work, rcfg.cifar, 3, 0)
    plan = ft.prepare_plan(cfg)[0]
    assert all(opt(argv, "--seed") in (None, "3", "4") for _, argv in plan.steps)
    assert repro._done_path(rcfg, "table4 retrain RotNet") == repro._done_path(ft.repro_config(cfg),
                                                                                "table4 retrain RotNet")


def test_fig5_units_are_a_seeded_draw():
    assert ft.fig5_units(256, 0, 1) == ft.fig5_units(256, 0, 1)
    assert ft.fig5_units(256, 0, 1) != ft.fig5_units(256, 1, 1)
    assert ft.fig5_units(3, 0, 0) == [0, 1, 2]


def test_default_checkpoints_are_those_make_repro_cpu_writes(toy, tmp_path):
    cfg = config(toy, tmp_path, checkpoints=(), supervised="", random="")
    with pytest.raises(click.ClickException, match="no such checkpoint; run `make repro-cpu` first"):
        ft.prepare_plan(cfg)
    found = ft.repro_checkpoints(ft.repro_config(cfg), toy["cifar"])
    mine = {"train.monogan": toy["gan"], "train.rotnet": toy["rot"], "train.supervised": toy["sup"],
            "train.random": toy["random"]}
    for module, runs in found.items():
        for _, path in runs:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shutil.copyfile(mine[module], path)
    sources = ft.resolve_sources(cfg, ft.repro_config(cfg), toy["cifar"])
    expected = [name.split(" ", 1)[1] for name, argv, _ in repro.main_plan(ft.repro_config(cfg), toy["cifar"])
                if argv[0] in ("train.monogan", "train.rotnet")]
    assert expected and [s.label for s in sources["single"]] == expected
    assert all("on toy (32 patches of 32 px" in s.trained_on for s in sources["single"])
    assert sources["supervised"][0].path.startswith(str(tmp_path))
    assert sources["random"][0].path.startswith(str(tmp_path))


@pytest.mark.parametrize("args,needle,code", [
    (["--checkpoint", "X=SCAT"], "--checkpoint X: --init-from SCAT: its encoder has no conv1/conv2", 1),
    (["--checkpoint", "nolabel"], "give LABEL=PATH", 2),
    (["--checkpoint", "X=nope.pt"], "--checkpoint nope.pt: no such checkpoint", 1),
    (["--checkpoint", "X=GAN", "--checkpoint", "X=ROT"], "the label 'X' is given twice", 1),
    (["--checkpoint", "X=GAN", "--content", "missing.png"], "--content missing.png: no such image", 1),
    (["--checkpoint", "X=ALEX"], "holds a 'alexnet' encoder", 1),
])
def test_bad_input_is_one_line_and_runs_nothing(toy, tmp_path, args, needle, code):
    alex = tmp_path / "alex"
    random_init.main(random_init.Config(out=str(alex), arch="alexnet", seed=0))
    subst = {"SCAT": toy["scat"], "GAN": toy["gan"], "ROT": toy["rot"], "ALEX": str(alex / "checkpoint.pt")}
    args = [next((a.replace(k, v) for k, v in subst.items() if k in a), a) for a in args]
    needle = next((needle.replace(k, v) for k, v in subst.items() if k in needle), needle)
    work = tmp_path / "w"
    r = CliRunner().invoke(ft.cli, ["--images", toy["images"], "--cifar", toy["cifar"], "--work", str(work),
                                    "--supervised", toy["sup"], "--random", toy["random"], "--content", "content.png",
                                    "--style", "style.png", *args])
    assert r.exit_code == code and needle in r.output and "Traceback" not in r.output, r.output
    assert not (work / "done").exists() and not (work / "finetune").exists()


def retrain(toy, out, *extra):
    supervised.main(parse_config(supervised.Config, ["--data", toy["cifar"], "--arch", "small", "--out", str(out),
                                                     "--init-from", toy["random"], "--init-layers", "conv1,conv2",
                                                     *FAST, *extra]))
    return str(out / "checkpoint.pt")


def test_frozen_blocks_are_unchanged_after_retraining_and_top1_is_the_trainers(toy, tmp_path):
    run = retrain(toy, tmp_path / "ft", "--freeze", "conv1,conv2", "--epochs", "1", "--lr", "0.1")
    rec = run_top1(Top1Config(checkpoint=run, data=toy["cifar"], out=str(tmp_path / "t.json"), workers=0,
                              frozen_from=toy["random"]))
    before, after = load_checkpoint(toy["random"])["encoder"], load_checkpoint(run)["encoder"]
    frozen = [k for k in before if k.startswith(("blocks.conv1.", "blocks.conv2."))]
    assert any("running_var" in k for k in frozen) and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["blocks.conv3.0.weight"], after["blocks.conv3.0.weight"])   # it did train
    assert rec["frozen"]["unchanged"] and rec["frozen"]["digests"] == block_digests(before, ("conv1", "conv2"), "")
    # the run ended on a complete epoch, so the trainer evaluated the same network: same top-1
    with open(tmp_path / "ft" / "log.jsonl") as f:
        epoch = [json.loads(line) for line in f if '"event": "epoch"' in line][-1]
    assert rec["top1"] == pytest.approx(100 * epoch["eval_top1"], abs=0.01) and rec["count"] == 12
    assert json.loads((tmp_path / "t.json").read_text())["top1"] == rec["top1"]


def test_a_frozen_block_that_moved_is_an_error_not_a_row(toy, tmp_path):
    moved = retrain(toy, tmp_path / "moved", "--max-steps", "2", "--lr", "0.1")      # nothing frozen
    with pytest.raises(click.ClickException, match=r"conv1,conv2 differ from .* although they were to stay frozen"):
        run_top1(Top1Config(checkpoint=moved, data=toy["cifar"], out=str(tmp_path / "t.json"), workers=0,
                            frozen_from=toy["random"]))
    assert not (tmp_path / "t.json").exists()
    ck = load_checkpoint(retrain(toy, tmp_path / "ok", "--freeze", "conv1,conv2", "--max-steps", "1"))
    ck["encoder"]["blocks.conv2.1.running_mean"] += 1e-3          # a BatchNorm statistic counts too
    save_checkpoint(ck, str(tmp_path / "tampered.pt"))
    with pytest.raises(click.ClickException, match="conv2 differ"):
        run_top1(Top1Config(checkpoint=str(tmp_path / "tampered.pt"), data=toy["cifar"],
                            out=str(tmp_path / "t.json"), workers=0, frozen_from=toy["random"]))
    with pytest.raises(click.ClickException, match="holds no classifier"):
        run_top1(Top1Config(checkpoint=toy["random"], data=toy["cifar"], out=str(tmp_path / "t.json"), workers=0))


# --------------------------------------------------------------------------- layout and reading


def measured(table, label, value, kind="single", method="monogan", paper=None, ref=""):
    spec = {"arch": "small", "norm": "bn", "act": "relu", "sobel": False}
    src = None if kind is None else ft.Source(label, f"{label}.pt", kind, spec, method, f"{method} on Image B")
    key = paper if paper is not None else ft.PAPER_ROW.get(method, "")
    row = ft.Row(table, label, key, f"runs/{label}", f"res/{label}", src, ref)
    return ft.Measured(row, value, None, {})


def table4_rows(scattering=52.0):
    return [measured("4", "Full sup.", 60.0, "supervised", "supervised"),
            measured("4", "Random", 50.0, "random", "random"),
            measured("4", "Random, seed +1", 51.0, "random", "random"),
            measured("4", "Scattering", scattering, None, paper="scattering"),
            measured("4", "MonoGAN", 55.0, ref="Random"),
            measured("4", "RotNet", 53.0, method="rotnet", ref="Random")]


def test_table4_layout_has_the_papers_value_beside_ours():
    text = ft.table4_md(table4_rows())
    lines = text.splitlines()
    assert lines[0] == "| conv1–2 (what they were trained on) | network | top-1 (ours) | top-1 (paper) |"
    assert "| **Full sup.**: supervised on Image B | BatchNorm, ReLU | 60.0 | 59.4 |" in lines
    assert any(line.startswith("| **Scattering**: fixed Morlet scattering") and line.endswith("| 52.0 | 49.2 |")
               for line in lines)
    assert "| **MonoGAN**: monogan on Image B | BatchNorm, ReLU | 55.0 | 51.4 (BiGAN, A) |" in lines
    assert lines[-1].endswith("| 53.0 | 49.5 (RotNet, A) |") and "42.6 (Random)" in text


def test_table4_reading_is_computed_from_the_numbers():
    text = ft.reading4(table4_rows())
    assert "Full sup. − Random: +10.0 points (paper +16.8)" in text
    assert "land 1.0 points apart" in text
    assert "MonoGAN: 55.0, +5.0 vs Random, -5.0 vs Full sup.; 50 % of the way" in text and "BiGAN, A: 52 %" in text
    assert "RotNet: 53.0, +3.0 vs Random" in text and "30 % of the way" in text and "RotNet, A: 41 %" in text
    assert "below all of them, as in the paper" in text
    assert "**not** below all of them" in ft.reading4(table4_rows(scattering=54.0))
    assert "no reading yet" in ft.reading4(table4_rows()[2:])
    near = table4_rows()
    near[4] = measured("4", "MonoGAN", 50.5, ref="Random")
    assert "+0.5 *within noise* vs Random" in ft.reading4(near)
    assert "Scattering − Full sup.: -8.0 points (paper -10.2)." in text
    assert "beats supervised conv1–2" in ft.reading4(table4_rows(scattering=62.0))


def test_table4_reading_gives_no_random_to_supervised_share_to_a_row_with_its_own_control():
    rows = table4_rows()
    rows.insert(3, measured("4", "Random, leaky", 40.0, "random", "random"))
    rows[5] = measured("4", "MonoGAN", 41.0, ref="Random, leaky")
    line = next(ln for ln in ft.reading4(rows).splitlines() if ln.startswith("- MonoGAN"))
    assert "+1.0 vs Random, leaky" in line and "no share of the way" in line and "% of the way" not in line
    assert "paper BiGAN, A: 52 %" in line


def test_table5_layout_and_reading():
    rows = [measured("5", "Full sup.", [60.0, 65.0, 66.0, 64.0, None], None, paper="full-sup"),
            measured("5", "MonoGAN", [61.0, 64.5, 62.0, 64.0, None], ref="Full sup.")]
    text = ft.table5_md(rows)
    head = text.splitlines()[0]
    assert head.startswith("| conv1–2 | c1 (ours) | c1 (paper) |") and head.endswith("| c5 (ours) | c5 (paper) |")
    assert ("| **Full sup.**: random (trained from scratch) | 60.0 | 19.3 | 65.0 | 36.3 | 66.0 | 44.2 | 64.0 | 48.3 "
            "| – | 50.5 |") in text
    assert "[paper: BiGAN, A] | 61.0 | 22.5 |" in text
    reading = ft.reading5(rows, spread=1.0)
    assert "conv1 +1.0 / conv2 -0.5 *within noise* / conv3 -4.0 / conv4 +0.0 *within noise*" in reading
    assert "+3.2 / +1.3 / +0.0 / -0.7 / -2.2" in reading
    assert "conv3 falls 4.0 points below, more than the noise" in reading
    rows[1] = measured("5", "MonoGAN", [61.0, 64.5, 65.5, 64.0, None], ref="Full sup.")
    assert "as the paper finds" in ft.reading5(rows, spread=1.0)
    assert "no reading yet" in ft.reading5(rows[:1], spread=None)


def test_table5_noise_is_its_own_seed_row_per_layer_where_it_ran():
    rows = [measured("5", "Full sup.", [60.0, 65.0, 66.0, 64.0, None], None, paper="full-sup"),
            measured("5", "Full sup., seed +1", [60.5, 63.0, 66.2, 64.1, None], None, paper="full-sup"),
            measured("5", "MonoGAN", [61.0, 64.5, 62.0, 64.0, None], ref="Full sup.")]
    assert ft.noise5(rows) == pytest.approx([0.5, 2.0, 0.2, 0.1, None])
    reading = ft.reading5(rows, spread=5.0)     # Table 4's spread is not used once Table 5 has its own
    assert "conv1 +1.0 / conv2 -0.5 *within noise* / conv3 -4.0 / conv4 +0.0 *within noise*" in reading
    assert "conv3 falls 4.0 points below, more than the noise" in reading
    assert "Full sup. trained from scratch with two seeds lands conv1 0.5 / conv2 2.0 / conv3 0.2 / conv4 0.1" in reading
    assert "Table 4's seed spread" not in reading
    assert "Table 4's seed spread (5.0 points" in ft.reading5([rows[0], rows[2]], spread=5.0)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_toy_end_to_end_writes_both_tables_and_the_figures_and_resumes(toy, tmp_path):
    work, out = tmp_path / "w", tmp_path / "docs" / "ft.md"
    args = ["--images", toy["images"], "--cifar", toy["cifar"], "--work", str(work), "--out", str(out),
            "--supervised", toy["sup"], "--random", toy["random"], "--checkpoint", f"MonoGAN={toy['gan']}",
            "--checkpoint", f"RotNet={toy['rot']}", "--content", "content.png", "--style", "style.png",
            "--retrain-steps", "2", "--finetune-steps", "2", "--probe-epochs", "1", "--batch-size", "8",
            "--workers", "0", "--style-steps", "2", "--style-size", "32", "--maximize-steps", "2",
            "--maximize-size", "32"]
    r = CliRunner().invoke(ft.cli, args)
    assert r.exit_code == 0, r.output
    text = out.read_text()
    t4 = text.split("## Table 4 layout")[1].split("## Table 5 layout")[0]
    t5 = text.split("## Table 5 layout")[1].split("## What this scale")[0]
    for label in ("Full sup.", "Random", "Random, seed +1", "Scattering", "MonoGAN", "RotNet"):
        row = next(line for line in t4.splitlines() if line.startswith(f"| **{label}**:"))
        assert 0 <= float(row.split("|")[3]) <= 100, row
    assert "for 6 of 7 rows it also checked that conv1–2 are bit-identical" in t4
    assert "for 2 steps or 2.5 / 9 min of training" in t4       # read from the runs' log headers
    for label in ("Full sup.", "MonoGAN", "RotNet"):
        row = next(line for line in t5.splitlines() if line.startswith(f"| **{label}**"))
        ours = [c.strip() for c in row.strip("|").split("|")[1::2]]
        assert all(0 <= float(v) <= 100 for v in ours[:4]) and ours[4] == "–", row
    assert "1 epochs, paper schedule" in t5 and "trained on 24 and evaluated on 12 images" in t5
    assert (tmp_path / "docs" / "ft-fig3.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "ft-fig5.png").stat().st_size > 1000
    done = sorted(os.listdir(work / "done"))
    r = CliRunner().invoke(ft.cli, args)
    assert r.exit_code == 0 and r.output.count("skipped") == len(done), r.output
    r = CliRunner().invoke(ft.cli, [*args, "--retrain-steps", "3"])
    assert r.exit_code == 1 and "with other arguments" in r.output


def test_a_control_encoder_is_written_once_and_keeps_the_commit_that_wrote_it(tmp_path, monkeypatch):
    spec = EncoderSpec(arch="small", norm="none", act="leaky").to_dict()
    src = ft.Source("Random, leaky", str(tmp_path / "init" / "checkpoint.pt"), "random", spec, "random", "no training")
    monkeypatch.setattr(ft, "git_rev", lambda: "aaaaaaa")
    first = ft.write_control(src, seed=0)
    with open(src.path, "rb") as f:
        written = f.read()
    monkeypatch.setattr(ft, "git_rev", lambda: "bbbbbbb")
    again = ft.write_control(src, seed=0)
    with open(src.path, "rb") as f:
        assert f.read() == written                    # not rewritten
    from train.checkpoint import load_checkpoint
    assert again["commit"] == str(load_checkpoint(src.path)["git"] or "not recorded")[:7] != "bbbbbbb"
    assert first["commit"] == "aaaaaaa"
    other = ft.Source("x", src.path, "random", dict(spec, norm="bn"), "random", "no training")
    with pytest.raises(click.ClickException, match="another network"):
        ft.write_control(other, seed=0)


def test_repro_finetune_takes_the_checkpoints_of_the_repro_run_it_follows(toy, tmp_path, monkeypatch):
    rcfg = repro.ReproConfig(images=toy["images"], cifar=toy["cifar"], work=str(tmp_path / "w"), rotnet=False,
                             finetune=True, finetune_out=str(tmp_path / "ft.md"))
    made = {"train.random": toy["random"], "train.supervised": toy["sup"], "train.monogan": toy["gan"]}
    for module, runs in ft.repro_checkpoints(rcfg, repro.cifar_root(rcfg)).items():
        for _, path in runs:   # the toy checkpoints where that run writes its own
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shutil.copyfile(made[module], path)
    cfg = ft.from_repro(rcfg, out=rcfg.finetune_out, content="content.png", style="style.png")
    labels = [r.label for r in ft.prepare_plan(cfg, trained_by=rcfg)[0].table4]
    assert "MonoGAN (Image B)" in labels and not any("RotNet" in label for label in labels)
    with pytest.raises(click.ClickException, match="no such checkpoint"):
        ft.prepare_plan(cfg)   # the default repro run has RotNet rows, which this work folder lacks
    seen = {}
    monkeypatch.setattr(repro, "step", lambda *a, **k: {"seconds": 0.0})
    monkeypatch.setattr(repro, "write_results", lambda *a, **k: None)
    monkeypatch.setattr(ft, "run_finetune", lambda c, trained_by=None: seen.update(cfg=c, by=trained_by))
    repro.run_repro(rcfg)
    assert seen["by"] is rcfg and seen["cfg"].out == rcfg.finetune_out and seen["cfg"].work == rcfg.work
    r = CliRunner().invoke(repro.cli, ["--images", toy["images"], "--cifar", toy["cifar"], "--work",
                                       str(tmp_path / "w"), "--out", str(tmp_path / "r.md"), "--no-rotnet",
                                       "--finetune", "--finetune-out", str(tmp_path / "f2.md")])
    assert r.exit_code == 0, r.output
    assert seen["by"].finetune and seen["cfg"].out == str(tmp_path / "f2.md")


def test_training_table_states_each_runs_precision():
    m = measured("4", "RotNet", 53.0, method="rotnet", ref="Random")
    run = {"steps": 800, "epochs": 1.02, "train_seconds": 75.0, "stopped": "steps", "config": {"seed": 0},
           "spec": {"arch": "small", "norm": "bn", "act": "relu"}, "precision": "fp32"}
    lines = ft.training_md([ft.Measured(m.row, 53.0, None, {}), ft.Measured(m.row, 53.0, run, {})]).splitlines()
    assert len(lines) == 3                # a row whose run has no record yet is left out
    line = lines[-1]
    assert line.startswith("| Table 4: RotNet | 800 | 1.02 | 75 | steps | 0 |") and line.endswith("| fp32 |")
