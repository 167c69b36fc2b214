"""The speed paths, tested on the CPU: --amp (bf16 where native, one line where not), --channels-last,
--decode-device cuda (its raw-batch path run on the CPU, and its fallback), and `make gpu-check`'s CPU run."""
import json

import pytest
import torch
from click.testing import CliRunner

from tests.toyset import make_toy_set
from train import rotnet
from train import run as trun
from train.config import parse_config
from train.loader import make_loader, random_crop_flip
from train.loader.batch import RawBatch, finish_raw
from train.loader.read import ShardError

FAST = ["--arch", "small", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--eval-batches", "1",
        "--max-steps", "1"]


def header(out):
    with open(out / "log.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def jpeg_set(tmp_path_factory):
    return make_toy_set(str(tmp_path_factory.mktemp("j") / "set"), count=24, size=40, fmt="jpg", per_shard=6)


def test_amp_dtype_follows_the_choice_and_the_cpu(tmp_path):
    without, with_bf16 = tmp_path / "plain", tmp_path / "bf16"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    cpu = torch.device("cpu")
    assert trun.amp_dtype(cpu, "on", str(with_bf16)) == (torch.bfloat16, "")
    assert trun.amp_dtype(cpu, "cuda", str(with_bf16)) == (None, "")     # the default keeps CPU runs fp32
    assert trun.amp_dtype(cpu, "off", str(with_bf16)) == (None, "")
    dtype, line = trun.amp_dtype(cpu, "on", str(without))
    assert dtype is None and "uses fp32" in line and "\n" not in line
    assert trun.amp_dtype(cpu, "on", str(tmp_path / "missing"))[0] is None   # no /proc/cpuinfo: fp32


@pytest.mark.parametrize("native", [True, False])
def test_amp_on_runs_bf16_where_native_and_says_fp32_elsewhere(toy_set, tmp_path, monkeypatch, native):
    monkeypatch.setattr(trun, "cpu_bf16_flags", lambda cpuinfo="": ("amx_bf16",) if native else ())
    out = tmp_path / "run"
    r = CliRunner().invoke(rotnet.cli, ["--shards", toy_set, "--out", str(out), "--amp", "on", *FAST])
    assert r.exit_code == 0, r.output
    said = [ln for ln in r.output.splitlines() if "uses fp32" in ln]
    assert len(said) == (0 if native else 1)
    assert header(out)[0]["precision"] == ("bf16" if native else "fp32")
    cfg = parse_config(rotnet.Config, ["--shards", toy_set, "--out", str(tmp_path / "r2"), "--amp", "on"])
    run = trun.Run(cfg, "rotnet")
    try:
        with run.autocast():
            y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
        assert y.dtype == (torch.bfloat16 if native else torch.float32)
    finally:
        run.close()


def test_channels_last_networks_checkpoint_like_contiguous_ones(toy_set, tmp_path):
    from probe.backbone import load_backbone

    outs = []
    for flag in ("--channels-last", "--no-channels-last"):
        out = tmp_path / flag.strip("-")
        r = CliRunner().invoke(rotnet.cli, ["--shards", toy_set, "--out", str(out), flag, "--seed", "3", *FAST])
        assert r.exit_code == 0, r.output
        outs.append(out)
    cfg = parse_config(rotnet.Config, ["--shards", toy_set, "--out", str(tmp_path / "w"), "--channels-last"])
    run = trun.Run(cfg, "rotnet")
    try:
        conv = run.wrap(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2)))
        assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert not conv[0].weight.is_contiguous()
    finally:
        run.close()
    # The same seed and steps: the same encoder up to float rounding; the probes read both alike.
    a, b = (load_backbone(str(o)) for o in outs)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    fa, fb = a.features(x, ["conv4"])["conv4"], b.features(x, ["conv4"])["conv4"]
    assert torch.allclose(fa, fb, rtol=1e-3, atol=1e-4)


def test_probe_feature_pass_under_amp_returns_float32_close_to_fp32(toy_set, tmp_path):
    from probe.backbone import load_backbone

    out = tmp_path / "run"
    assert CliRunner().invoke(rotnet.cli, ["--shards", toy_set, "--out", str(out), *FAST]).exit_code == 0
    bb = load_backbone(str(out))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    fp32 = bb.features(x, ["conv1", "conv4"])
    bb.amp_dtype = torch.bfloat16
    bf16 = bb.features(x, ["conv1", "conv4"])
    for name in fp32:
        assert bf16[name].dtype == torch.float32
        rel = (bf16[name] - fp32[name]).norm() / fp32[name].norm()
        assert 0 < rel < 0.05, (name, rel)


def all_batches(loader, epoch=0):
    return [(x.clone(), i.tolist()) for x, i in loader.epoch(epoch)]


@pytest.mark.parametrize("workers", [0, 1])
def test_raw_batches_decoded_in_one_call_equal_the_worker_path(jpeg_set, workers):
    # The --decode-device cuda path (payloads sent undecoded with the batch's crop draws, decoded in
    # one batched decode_jpeg call, cropped after) run on the CPU: the same batches, bit for bit.
    for t in (random_crop_flip(32), None):
        plain = make_loader(jpeg_set, batch_size=4, workers=workers, seed=7, transform=t)
        raw = make_loader(jpeg_set, batch_size=4, workers=workers, seed=7, transform=t)
        raw.decode_device = torch.device("cpu")
        a, b = all_batches(plain, 1), all_batches(raw, 1)
        assert len(a) == 6 and [i for _, i in a] == [i for _, i in b]
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
        once = [x for x, _ in raw.once()]
        assert sum(len(x) for x in once) == 24


def test_a_damaged_payload_in_a_raw_batch_names_its_shard_and_key(jpeg_set):
    loader = make_loader(jpeg_set, batch_size=4, workers=0, seed=0)
    loader.stream.raw, loader.stream.batches = True, loader.batches_per_epoch
    raw = next(iter(loader.stream))
    assert isinstance(raw, RawBatch) and raw.u is None
    data = list(raw.data)
    data[2] = bytearray(b"\xff\xd8" + bytes(50))
    with pytest.raises(ShardError, match=f"sample {int(raw.keys[2])} cannot be decoded") as e:
        finish_raw(raw._replace(data=data), None, torch.device("cpu"))
    assert raw.urls[2] in str(e.value)


def test_decode_device_cuda_without_a_gpu_falls_back_in_one_line(jpeg_set, tmp_path, monkeypatch):
    out = tmp_path / "run"
    r = CliRunner().invoke(rotnet.cli, ["--shards", jpeg_set, "--out", str(out), "--decode-device", "cuda",
                                        "--crop", "32", *FAST])
    assert r.exit_code == 0, r.output
    said = [ln for ln in r.output.splitlines() if ln.startswith("--decode-device cuda:")]
    assert said == ["--decode-device cuda: no CUDA device is visible here; decoding on the CPU"]
    event = next(e for e in header(out) if e.get("event") == "decode_device")
    assert event["device"] == "cpu" and "no CUDA" in event["why"]
    # Where a GPU exists, what still cannot be decoded there is named.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    png = make_loader(make_toy_set(str(tmp_path / "png"), count=8, size=32), batch_size=4, workers=0, seed=0)
    assert "PNG" in png.decode_on(torch.device("cuda"))
    loader = make_loader(jpeg_set, batch_size=4, workers=0, seed=0, transform=lambda img, g: img)
    assert "per sample" in loader.decode_on(torch.device("cuda"))
    assert "trains on cpu" in loader.decode_on(torch.device("cpu"))


def test_device_cuda_without_a_gpu_is_one_line(toy_set, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    r = CliRunner().invoke(rotnet.cli, ["--shards", toy_set, "--out", str(tmp_path / "run"), *FAST,
                                        "--device", "cuda"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1] == "Error: --device cuda: no CUDA device is visible here; use --device cpu"


def gpu_check(*args):
    from tests.bench import gpu_check as gc

    return CliRunner().invoke(gc.main, ["--out", "unused.md", *args])


def test_gpu_check_without_a_gpu_says_so_and_runs_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = gpu_check("--only", "clustering", "--only", "probe", "--only", "ddp")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0].startswith("gpu-check: no CUDA device here")
    for section in ("## 3. DeepCluster's clustering", "## 4. A probe epoch", "## 5. DDP, one process"):
        assert section in r.output
    assert "| torch on cpu |" in r.output and "over GLOO" in r.output
    assert not (tmp_path / "unused.md").exists()


@pytest.mark.slow
def test_gpu_check_every_section_runs_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = gpu_check()
    assert r.exit_code == 0, r.output
    for n in range(1, 6):
        assert f"## {n}. " in r.output
    assert r.output.count("(bf16)") + r.output.count("(fp32)") == 9      # every trainer row ran
    assert "decode on the CPU" in r.output


def test_repro_gpu_options_reach_every_command_and_default_leaves_each_commands_own(tmp_path):
    from repro.config import ReproConfig
    from repro.table3 import plan

    # "default": each command's own --amp (fp32 on the CPU)
    base = ReproConfig(images=str(tmp_path), cifar=str(tmp_path), work=str(tmp_path / "w"), amp="default",
                       channels_last=False)
    plain = {s.name: s.argv for s in plan(base, "data")}
    assert not any("--amp" in a or "--channels-last" in a for a in plain.values())
    gpu = ReproConfig(images=str(tmp_path), cifar=str(tmp_path), work=str(tmp_path / "w"), device="cuda",
                      amp="on", channels_last=True, monogan_steps=7, full_schedules=True, train_minutes=0)
    steps = {s.name: s.argv for s in plan(gpu, "data")}
    mono = next(v for k, v in steps.items() if k.startswith("train MonoGAN"))
    sup = next(v for k, v in steps.items() if k.startswith("train Fully supervised"))
    assert mono[mono.index("--max-steps") + 1] == "7" and "--time-budget" not in mono
    assert "--time-budget" not in sup and "--epochs" not in sup and "--max-steps" not in sup
    for name, argv in steps.items():
        if name.startswith(("train", "probe")):
            assert argv[argv.index("--amp") + 1] == "on", name
        assert ("--channels-last" in argv) == name.startswith("train"), name
    assert steps["pack CIFAR-10 train"][:2] == ("augment", "pack")


def test_repro_trains_and_probes_in_bf16_by_default_and_finetune_keeps_fp32(tmp_path):
    from repro.config import FinetuneConfig, ReproConfig
    from repro.table3 import plan
    from repro.table45 import repro_config

    steps = {s.name: s.argv for s in plan(ReproConfig(images=str(tmp_path), cifar=str(tmp_path),
                                                       work=str(tmp_path / "w")), "data")}
    for name, argv in steps.items():
        if name.startswith(("train", "probe")):
            assert argv[argv.index("--amp") + 1] == "on", name
        assert ("--channels-last" in argv) == name.startswith("train"), name
    rcfg = repro_config(FinetuneConfig(work=str(tmp_path / "w")))
    assert not any("--amp" in s.argv for s in plan(rcfg, "data"))


def test_precision_comes_from_the_log_header_and_old_boolean_amp_meant_cuda_only():
    from repro.records import precision_of, probe_protocol

    assert precision_of({"precision": "bf16", "config": {"amp": "on"}, "device": "cpu"}) == "bf16"
    assert precision_of({"config": {"amp": True}, "device": "cpu"}) == "fp32"
    assert precision_of({"config": {"amp": True}, "device": "cuda:0"}) == "bf16"
    assert precision_of({"config": {"amp": "on"}}) == "not recorded"
    assert probe_protocol({"config": {"epochs": 1}, "resolved": {"precision": "bf16"}})["backbone pass"] == "bf16"
    assert probe_protocol({"config": {"epochs": 1}, "resolved": {}})["backbone pass"] == "fp32"
    assert probe_protocol({"config": {"amp": "on"}, "resolved": {}})["backbone pass"] == "not recorded"


def test_render_stage_breakdown_runs_and_its_same_bytes_claims_hold(tmp_path):
    """`make bench`'s render breakdown on a small synthetic source: every stage is timed, the 3-channel
    alternative reproduces the renderer's bytes and nearest-neighbour does not (the table says which)."""
    import cv2
    import numpy as np

    from augment.sources import load
    from tests.bench.render import stages

    rng = np.random.default_rng(0)
    path = str(tmp_path / "src.png")
    cv2.imwrite(path, rng.integers(0, 256, (700, 900, 3), dtype=np.uint8))
    lines = stages(load("src.png", path), n=12, reps=1, floor=4000.0)
    rows = {ln.split(" | ")[0].lstrip("| "): ln for ln in lines if ln.startswith("| ")}
    assert "+ JPEG q95 encode" in rows and "+ bilinear warp, 4 channels (`cv2.warpAffine`)" in rows
    assert rows["3-channel levels and warp (no RGBA -> RGB)"].endswith("| yes |")
    assert rows["output arrays allocated once (`dst=`)"].endswith("| yes |")
    assert rows["warp reading the level in place (no region copy)"].endswith("| yes |")
    assert rows["nearest-neighbour warp (not the paper's resampling)"].endswith("| no |")
    assert any(ln.startswith("Ceiling:") for ln in lines)


def test_bench_splice_replaces_sections_and_keeps_when_each_was_measured():
    from tests.bench.run import splice

    old = "# Benchmarks\n\nMeasured by `make bench` on A, commit 1, day 1.\n\n## X\n\nx1\n\n## Y\n\ny1\n"
    t2 = "# Benchmarks\n\nMeasured by `make bench` on B, commit 2, day 2.\n"
    once = splice(old, ["## X\n\nx2\n"], t2)
    assert "x2" in once and "x1" not in once and "y1" in once
    assert "- X: re-measured by `make bench ONLY=...` on B, commit 2, day 2." in once
    twice = splice(once, ["## Y\n\ny3\n", "## Z (new)\n\nz3\n"],
                   "# Benchmarks\n\nMeasured by `make bench` on C, commit 3, day 3.\n")
    assert "- X: re-measured by `make bench ONLY=...` on B, commit 2, day 2." in twice   # kept
    assert "- Y: re-measured by `make bench ONLY=...` on C, commit 3, day 3." in twice
    assert twice.count("- Y: re-measured") == 1 and "y3" in twice and twice.rstrip().endswith("z3")
    assert "Measured by `make bench` on A, commit 1, day 1." in twice
    again = splice(twice, ["## X\n\nx4\n"], "# Benchmarks\n\nMeasured by `make bench` on D, commit 4, day 4.\n")
    assert again.count("- X: re-measured") == 1 and "on D, commit 4" in again and "on B, commit 2" not in again


def test_precision_reading_is_computed_from_the_table():
    from tests.bench.precision import speed_reading

    text = speed_reading({"MonoGAN, batch 64 (a step)": [2.0, 2.5, 1.0, 0.8],
                          "RotNet, small, batch 192 (x4)": [1.0, 0.9, 0.5, 0.5]})
    assert text.startswith("MonoGAN: **x2.00** in bf16 (goal x1.5), x2.50 with channels-last.")
    assert "in bf16 MonoGAN +20%, RotNet small +0%" in text and "in fp32 MonoGAN -25%, RotNet small +10%" in text
