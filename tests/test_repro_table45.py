"""Tables 4 and 5 (`make repro-finetune-cpu`, `python -m repro table45`) and the top-1 evaluation, on toy data."""
import json
import os
import shutil

import click
import pytest
import torch
from click.testing import CliRunner

from probe.top1 import Top1Config, block_digests, run_top1
from repro import __main__ as main_cmd
from repro import figures, table3
from repro import table45 as ft
from repro.__main__ import cli
from repro.config import FinetuneConfig, ReproConfig
from repro.stats import Spread, per_layer
from tests.test_repro_table3 import tiny_cifar
from tests.toyset import make_toy_set
from train import monogan, random_init, rotnet, supervised
from train.checkpoint import load_checkpoint, save_checkpoint
from train.config import parse_config
from train.models import ARCHS, Encoder, EncoderSpec
from train.run import write_bare_checkpoint

FAST = ["--batch-size", "8", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Tiny CIFAR-like folder, a one-image shard set, a packed dataset, and real checkpoints of each."""
    from augment.__main__ import cli as augment_cli

    root = tmp_path_factory.mktemp("ft")
    cifar = tiny_cifar(str(root / "cifar"))
    shards = make_toy_set(str(root / "set"), count=32, size=32, per_shard=16)
    packed = str(root / "packed")
    r = CliRunner().invoke(augment_cli, ["pack", os.path.join(cifar, "train"), "--out", packed])
    assert r.exit_code == 0, r.output
    random_init.main(random_init.Config(out=str(root / "random"), arch="small", seed=0))
    supervised.main(parse_config(supervised.Config, ["--data", cifar, "--arch", "small", "--out", str(root / "sup"),
                                                     "--max-steps", "2", *FAST]))
    for name, data in (("rot", shards), ("rot-packed", packed)):
        rotnet.main(parse_config(rotnet.Config, ["--shards", data, "--arch", "small", "--crop", "28",
                                                 "--out", str(root / name), "--max-steps", "1", *FAST]))
    monogan.main(parse_config(monogan.Config, ["--shards", shards, "--out", str(root / "gan"), "--max-steps", "1",
                                               "--n-critic", "1", *FAST]))
    scat = str(root / "scat" / "checkpoint.pt")   # an encoder whose conv1-2 are the scattering frontend
    write_bare_checkpoint(scat, method="supervised", cfg=supervised.Config(arch="small"),
                          encoder=Encoder(EncoderSpec(arch="small", frontend="scattering", frontend_size=32)))
    images = root / "images"
    images.mkdir()
    for name in ("content.png", "style.png"):
        shutil.copyfile(str(root / "cifar" / "train" / "class0" / "0000.jpg"), str(images / name))
    paths = {k: str(root / k / "checkpoint.pt") for k in ("random", "sup", "rot", "gan", "rot-packed")}
    return {"root": root, "cifar": cifar, "images": str(images), "scat": scat, "packed": packed, **paths}


def config(toy, work, **kw) -> FinetuneConfig:
    base = dict(images=toy["images"], cifar=toy["cifar"], work=str(work), out=str(work / "r.md"),
                checkpoints=(f"MonoGAN={toy['gan']}", f"RotNet={toy['rot']}"), supervised=toy["sup"],
                random=toy["random"], retrain_steps=7, retrain_minutes=1, scattering_minutes=5, finetune_steps=9,
                finetune_minutes=1.5, probe_epochs=3, content="content.png", style="style.png")
    return FinetuneConfig(**(base | kw))


def argv_of(plan, name):
    return list(next(s.argv for s in plan.steps if s.name == name))


def opt(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


def test_plan_retrains_each_source_with_conv1_2_frozen_and_every_seed(toy, tmp_path):
    plan, controls = ft.prepare_plan(config(toy, tmp_path))
    t4 = [r.label for r in plan.table4]
    assert t4 == ["Full sup.", "Random", "Random, no normalisation, leaky ReLU", ft.ADAPTER, "Scattering",
                  "MonoGAN", "RotNet"]
    src = {"Full sup.": toy["sup"], "Random": toy["random"], ft.ADAPTER: toy["random"], "MonoGAN": toy["gan"],
           "RotNet": toy["rot"]}
    for row in plan.table4:
        for k, seed in enumerate((0, 1)):
            a = argv_of(plan, f"table4 retrain {row.label}, seed {seed}")
            top = argv_of(plan, f"table4 top-1 {row.label}, seed {seed}")
            assert opt(a, "--max-steps") == "7" and opt(a, "--seed") == str(seed)
            if row.label == "Scattering":
                assert opt(a, "--frontend") == "scattering" and "--init-from" not in a and "--freeze" not in a
                assert opt(a, "--time-budget") == "300" and "--frozen-from" not in top
                continue
            want = controls[0].paths[k] if row.source.kind == "control" else src[row.label]
            assert (opt(a, "--init-from"), opt(a, "--init-layers"), opt(a, "--freeze")) == (want, "conv1,conv2",
                                                                                            "conv1,conv2")
            assert opt(a, "--time-budget") == "60" and opt(top, "--frozen-from") == want
            assert ("--adapter" in a) == (row.label == ft.ADAPTER)
    # the MonoGAN critic's network (no norm, leaky ReLU) gets its own seeded random controls
    assert [c.spec["norm"] for c in controls] == ["none"] and len(set(controls[0].paths)) == 2
    assert [r.ref for r in plan.table4 if r.label in ("MonoGAN", "RotNet", "Scattering")] == [
        ft.ADAPTER, controls[0].label, "Random"]
    runs = [ft.run_dir(config(toy, tmp_path), r, s) for r in plan.table4 + plan.table5 for s in (0, 1)]
    assert len(set(runs)) == len(runs)


def test_plan_fine_tunes_everything_for_table5_and_probes_every_layer(toy, tmp_path):
    cfg = config(toy, tmp_path)
    plan, controls = ft.prepare_plan(cfg)
    assert [r.label for r in plan.table5] == ["Full sup.", "Full sup., no normalisation, leaky ReLU", "MonoGAN",
                                              "RotNet"]
    for row in plan.table5:
        for k, seed in enumerate((0, 1)):
            a = argv_of(plan, f"table5 fine-tune {row.label}, seed {seed}")
            assert "--freeze" not in a and opt(a, "--init-from") == (row.source.path(k) if row.source else None)
            assert opt(a, "--max-steps") == "9" and opt(a, "--time-budget") == "90" and opt(a, "--seed") == str(seed)
            p = argv_of(plan, f"table5 probe {row.label}, seed {seed}")
            assert p[0] == "probe.linear" and opt(p, "--checkpoint") == os.path.join(ft.run_dir(cfg, row, seed),
                                                                                       "checkpoint.pt")
            assert (opt(p, "--epochs"), opt(p, "--protocol")) == ("3", "cifar") and "--layers" not in p
    figs = [s for s in plan.steps if s.name.startswith("fig")]
    assert len(figs) == 1 + 2 * len(ARCHS["small"])
    assert opt(list(figs[0].argv), "--checkpoint") == toy["gan"] and opt(list(figs[0].argv), "--compare") == toy["sup"]
    for step, (layer, width, *_) in zip(figs[1::2], ARCHS["small"]):
        units = [int(u) for u in opt(list(step.argv), "--units").split(",")]
        assert opt(list(step.argv), "--layer") == layer and len(set(units)) == 4 and all(0 <= u < width for u in units)
    lean = ft.prepare_plan(config(toy, tmp_path / "b", spec_controls=False, figures=False, adapter_control=False,
                                  seeds=1))[0]
    assert [r.label for r in lean.table4] == ["Full sup.", "Random", "Scattering", "MonoGAN", "RotNet"]
    assert not any(s.name.startswith("fig") or s.name.endswith("seed 1") for s in lean.steps)


def test_a_packed_dataset_is_the_full_data_reference_not_a_single_image_row(toy, tmp_path):
    """RotNet trained on a real packed set (augment pack) for a step: never a single-image source."""
    cfg = config(toy, tmp_path, checkpoints=(f"MonoGAN={toy['gan']}", f"RotNet (CIFAR-10)={toy['rot-packed']}"))
    plan, _ = ft.prepare_plan(cfg)
    row = next(r for r in plan.table4 if r.label == "RotNet (CIFAR-10)")
    assert row.source.kind == "reference" and row.paper == "" and "packed unchanged" in row.source.trained_on
    assert [r.label for r in plan.table4][-2:] == ["MonoGAN", "RotNet (CIFAR-10)"]
    m = ft.Measured(row, Spread((55.0, 56.0)), [], [])
    assert "full-data reference, not a single-image row" in ft.row_name(m)
    only = config(toy, tmp_path / "o", checkpoints=(f"RotNet (CIFAR-10)={toy['rot-packed']}",))
    with pytest.raises(click.ClickException, match="no single-image model"):
        ft.prepare_plan(only)


def test_default_sources_are_every_seed_of_table3s_runs(toy, tmp_path):
    cfg = config(toy, tmp_path, checkpoints=(), supervised="", random="")
    with pytest.raises(click.ClickException, match="no such checkpoint; run `make repro-cpu` first"):
        ft.prepare_plan(cfg)
    rcfg = ft.repro_config(cfg)
    made = {"random": toy["random"], "supervised": toy["sup"], "monogan": toy["gan"], "rotnet": toy["rot"]}
    for spec in table3.row_specs(rcfg):
        for seed in rcfg.seed_list():
            path = os.path.join(table3.run_dir(rcfg, spec.label, seed), "checkpoint.pt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # RotNet (CIFAR-10) is trained for real on the packed set; the others are the toy checkpoints
            shutil.copyfile(toy["rot-packed"] if spec.label == table3.ROTNET_CIFAR else made[spec.method], path)
    sources = ft.resolve_sources(cfg, rcfg)
    assert [s.label for s in sources["single"]] == ["MonoGAN (Image B)", "RotNet (Image B)"]
    assert [s.label for s in sources["reference"]] == [table3.ROTNET_CIFAR]
    assert all(len(s.paths) == 2 and s.paths[1].endswith("seed1/checkpoint.pt") for s in sources["single"])
    assert sources["supervised"][0].path(1) != sources["supervised"][0].path(0)


@pytest.mark.parametrize("args,needle,code", [
    (["--checkpoint", "X=SCAT"], "--checkpoint X: --init-from SCAT: its encoder has no conv1/conv2", 1),
    (["--checkpoint", "nolabel"], "give LABEL=PATH", 2),
    (["--checkpoint", "X=nope.pt"], "--checkpoint nope.pt: no such checkpoint", 1),
    (["--checkpoint", "X=GAN", "--checkpoint", "X=ROT"], "the label 'X' is given twice", 2),
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
    r = CliRunner().invoke(cli, ["table45", "--images", toy["images"], "--cifar", toy["cifar"], "--work", str(work),
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
    with open(tmp_path / "ft" / "log.jsonl") as f:
        epoch = [json.loads(line) for line in f if '"event": "epoch"' in line][-1]
    assert rec["top1"] == pytest.approx(100 * epoch["eval_top1"], abs=0.01) and rec["count"] == 12


def test_the_adapter_control_trains_a_1x1_adapter_on_frozen_random_conv1_2(toy, tmp_path):
    run = retrain(toy, tmp_path / "ad", "--freeze", "conv1,conv2", "--adapter", "--max-steps", "2", "--lr", "0.1")
    ck = load_checkpoint(run)
    assert ck["encoder_spec"]["adapter"] is True
    before, after = load_checkpoint(toy["random"])["encoder"], ck["encoder"]
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("blocks.conv1.", "blocks.conv2.")))
    assert after["blocks.conv3.0.0.weight"].shape == (256, 256, 1, 1)     # the adapter: conv2's 256 -> 256
    rec = run_top1(Top1Config(checkpoint=run, data=toy["cifar"], out=str(tmp_path / "t.json"), workers=0,
                              frozen_from=toy["random"]))
    assert rec["frozen"]["unchanged"] and 0 <= rec["top1"] <= 100
    r = CliRunner().invoke(supervised.cli, ["--data", toy["cifar"], "--arch", "small", "--frontend", "scattering",
                                            "--adapter", "--out", str(tmp_path / "x"), *FAST])
    assert r.exit_code == 1 and "--adapter has nothing to act on" in r.output


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


# --------------------------------------------------------------------------- rows, layout and reading


def measured(table, label, values, kind="single", method="monogan", paper=None, ref="", frontend=""):
    spec = {"arch": "small", "norm": "bn", "act": "relu", "sobel": False}
    src = None if kind is None else ft.Source(label, (f"{label}.pt",), kind, spec, method, f"{method} on Image B")
    key = paper if paper is not None else ft.PAPER_ROW.get(method, "")
    row = ft.Row(table, label, key, src, ref, frontend)
    value = Spread(tuple(values)) if table == "4" else per_layer(values)
    return ft.Measured(row, value, [], [{}] * len(values))


def table4(scattering=(52.0, 52.5), mono=(55.0, 56.0)):
    return [measured("4", "Full sup.", (60.0, 61.0), "supervised", "supervised"),
            measured("4", "Random", (50.0, 51.0), "random", "random"),
            measured("4", ft.ADAPTER, (51.5, 52.0), "random", "random", paper="", frontend="adapter"),
            measured("4", "Scattering", scattering, None, paper="scattering", ref=ft.ADAPTER, frontend="scattering"),
            measured("4", "MonoGAN", mono, ref="Random"),
            measured("4", "RotNet (CIFAR-10)", (58.0, 58.5), "reference", "rotnet", paper="", ref="Random")]


def test_table4_layout_has_the_papers_value_beside_our_mean_and_spread():
    lines = ft.table4_md(table4()).splitlines()
    assert lines[0] == "| conv1–2 (what they were trained on) | network | seeds | top-1 (ours) | top-1 (paper) |"
    assert "| **Full sup.**: supervised on Image B | BatchNorm, ReLU | 2 | 60.5 ± 0.5 | 59.4 |" in lines
    assert any(l.startswith("| **Scattering**: fixed Morlet") and l.endswith("| 52.2 ± 0.2 | 49.2 |") for l in lines)
    assert "| **MonoGAN**: monogan on Image B | BatchNorm, ReLU | 2 | 55.5 ± 0.5 | 51.4 (BiGAN, A) |" in lines
    assert lines[-1].endswith("| 58.2 ± 0.2 | – |") and "full-data reference" in lines[-1]


def test_table4_reading_claims_directions_only_outside_the_seed_spread():
    text = "\n".join(ft.reading4(table4()))
    assert "Full sup. − Random: +10.0 (above) (paper +16.8)" in text
    assert "MonoGAN (single-image): 55.5 ± 0.5, +5.0 (above) vs Random, -5.0 (below) vs Full sup." in text
    assert "RotNet (CIFAR-10) (full-data reference)" in text
    assert "Random + adapter − Random +1.2 (above)" in text and "Scattering − Random + adapter +0.5 (within" in text
    assert "Scattering vs MonoGAN: -3.2 (below)" in text
    near = "\n".join(ft.reading4(table4(mono=(50.5, 52.0))))
    assert "+0.8 (within the seed spread) vs Random" in near
    assert "no reading yet" in ft.reading4(table4()[2:])[0]


def test_table5_layout_and_reading():
    rows = [measured("5", "Full sup.", [[60.0, 65.0, 66.0, 64.0, None], [61.0, 64.0, 66.5, 64.5, None]], None,
                     paper="full-sup"),
            measured("5", "MonoGAN", [[62.0, 64.5, 62.0, 64.0, None], [62.5, 65.5, 63.0, 64.4, None]],
                     ref="Full sup.")]
    text = ft.table5_md(rows)
    head = text.splitlines()[0]
    assert head.startswith("| conv1–2 | seeds | c1 (ours) | c1 (paper) |") and head.endswith("| c5 (paper) |")
    assert "| **Full sup.**: random (trained from scratch) | 2 | 60.5 ± 0.5 | 19.3 |" in text
    assert "[paper: BiGAN, A] | 2 | 62.2 ± 0.2 | 22.5 |" in text
    reading = "\n".join(ft.reading5(rows))
    assert "conv1 +1.8 (above)" in reading and "conv2 +0.5 (within the seed spread)" in reading
    assert "conv3 -3.8 (below)" in reading and "+3.2 / +1.3 / +0.0 / -0.7 / -2.2" in reading
    assert "no reading yet" in ft.reading5(rows[:1])[0]


def test_training_table_states_each_runs_precision_and_a_capped_run():
    m = measured("4", "RotNet", (53.0,), method="rotnet", ref="Random")
    run = {"steps": 800, "epochs": 1.02, "train_seconds": 75.0, "stopped": "steps", "config": {"seed": 0},
           "spec": {"arch": "small", "norm": "bn", "act": "relu"}, "precision": "fp32"}
    capped = dict(run, steps=300, stopped="time cap", config={"seed": 1, "max_steps": 800})
    lines = ft.training_md([ft.Measured(m.row, m.value, [run, capped], [{}, {}])]).splitlines()
    assert lines[2].startswith("| Table 4: RotNet | 800 | 1.02 | 75 | steps | 0 |") and lines[2].endswith("| fp32 |")
    assert "time cap at 300 of 800 steps — not comparable" in lines[3]


def test_a_control_encoder_is_written_once_per_seed_and_keeps_the_commit_that_wrote_it(tmp_path, monkeypatch):
    spec = EncoderSpec(arch="small", norm="none", act="leaky").to_dict()
    paths = (str(tmp_path / "s0" / "checkpoint.pt"), str(tmp_path / "s1" / "checkpoint.pt"))
    src = ft.Source("Random, leaky", paths, "control", spec, "random", "no training")
    monkeypatch.setattr(ft, "commit", lambda: "aaaaaaa")
    first = ft.write_control(src, [0, 1])
    written = [open(p, "rb").read() for p in paths]
    a, b = (load_checkpoint(p)["encoder"] for p in paths)
    assert not torch.equal(a["blocks.conv1.0.weight"], b["blocks.conv1.0.weight"])   # two seeds, two encoders
    monkeypatch.setattr(ft, "commit", lambda: "bbbbbbb")
    again = ft.write_control(src, [0, 1])
    assert [open(p, "rb").read() for p in paths] == written and "bbbbbbb" not in again["commit"]
    assert first["commit"] == "aaaaaaa"
    with pytest.raises(click.ClickException, match="another network"):
        ft.write_control(ft.Source("x", paths, "control", dict(spec, norm="bn"), "random", ""), [0, 1])


def test_fig5_units_are_a_seeded_draw():
    assert figures.fig5_units(256, 0, 1) == figures.fig5_units(256, 0, 1) != figures.fig5_units(256, 1, 1)
    assert figures.fig5_units(3, 0, 0) == [0, 1, 2]


def test_table3_finetune_runs_table45_on_its_own_work_folder_and_seeds(tmp_path, monkeypatch):
    rcfg = ReproConfig(images="imgs", cifar="c", work=str(tmp_path / "w"), seed=3, seeds=3, workers=0,
                       finetune=True, finetune_out=str(tmp_path / "ft.md"))
    seen = {}
    monkeypatch.setattr(table3, "run", lambda cfg: [])
    monkeypatch.setattr(ft, "run", lambda cfg, trained_by=None: (seen.update(cfg=cfg, by=trained_by), ([], []))[1])
    main_cmd.run_table3(rcfg)
    cfg = seen["cfg"]
    assert seen["by"] is rcfg and (cfg.work, cfg.seed, cfg.seeds, cfg.workers, cfg.out) == (
        rcfg.work, 3, 3, 0, rcfg.finetune_out)


@pytest.mark.slow
def test_toy_end_to_end_writes_both_tables_and_the_figures_and_resumes(toy, tmp_path):
    work, out = tmp_path / "w", tmp_path / "docs" / "ft.md"
    args = ["--images", toy["images"], "--cifar", toy["cifar"], "--work", str(work), "--out", str(out),
            "--supervised", toy["sup"], "--random", toy["random"], "--checkpoint", f"MonoGAN={toy['gan']}",
            "--checkpoint", f"RotNet={toy['rot']}", "--content", "content.png", "--style", "style.png",
            "--retrain-steps", "2", "--finetune-steps", "2", "--probe-epochs", "1", "--batch-size", "8",
            "--workers", "0", "--style-steps", "2", "--style-size", "32", "--maximize-steps", "2",
            "--maximize-size", "32", "--no-spec-controls"]
    r = CliRunner().invoke(cli, ["table45", *args])
    assert r.exit_code == 0, r.output
    cfg = config(toy, work, out=str(out), retrain_steps=2, finetune_steps=2, probe_epochs=1, batch_size=8,
                 workers=0, style_steps=2, style_size=32, maximize_steps=2, maximize_size=32, spec_controls=False,
                 checkpoints=(f"MonoGAN={toy['gan']}", f"RotNet={toy['rot']}"))
    plan, _ = ft.prepare_plan(cfg)
    m4, m5 = ft.collect(cfg, plan)
    assert all(m.value.n == 2 and 0 <= m.value.mean <= 100 for m in m4)
    assert all(len(m.results) == 2 and m.value[4] is None for m in m5)
    text = out.read_text()
    for m in m4:
        assert f"| {m.value.text()} |" in next(l for l in text.splitlines() if l.startswith(f"| **{m.row.label}**"))
    assert "for 10 of 12 runs it also checked that conv1–2 are bit-identical" in text
    assert (tmp_path / "docs" / "ft-fig3.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "ft-fig5.png").stat().st_size > 1000
    done = sorted(os.listdir(work / "done"))
    r = CliRunner().invoke(cli, ["table45", *args])
    assert r.exit_code == 0 and r.output.count("skipped") == len(done), r.output
    r = CliRunner().invoke(cli, ["table45", *args, "--retrain-steps", "3"])
    assert r.exit_code == 1 and "with other arguments" in r.output
