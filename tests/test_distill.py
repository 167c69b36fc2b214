"""Single-image distillation: the loss, CutMix, teachers (checkpoint and torchvision), a few steps through
the CLI that raise agreement with a fixed toy teacher, a frozen teacher, bad input, exact resume."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from train import distill
from train.checkpoint import checkpoint_dict, load_checkpoint, save_checkpoint
from train.models import EncoderSpec, SmallClassifier

FAST = ["--batch-size", "8", "--workers", "0", "--device", "cpu", "--eval-batches", "0", "--lr", "0.003"]


def invoke(*args):
    return CliRunner().invoke(distill.cli, [str(a) for a in args])


def logs(out):
    with open(out / "log.jsonl") as f:
        return [json.loads(line) for line in f]


def write_teacher(path, classes=2, method="supervised", seed=0):
    """A fixed random small-encoder classifier saved in this tool's checkpoint layout."""
    torch.manual_seed(seed)
    net = SmallClassifier(EncoderSpec(arch="small"), classes, 32)
    # a random head's logits are nearly equal, and at T = 8 the targets would be uniform: sharpened to a logit
    # spread of about 2 T, the teacher has opinions a student can learn
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        probe = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        head.weight.mul_(16.0 / net.eval()(probe).std().clamp_min(1e-6))
    state = {"model": net.state_dict()} if method == "supervised" else {}
    ck = checkpoint_dict(method=method, config={"arch": "small", "size": 32}, encoder=net.encoder, state=state,
                         epoch=1, step=1, train_seconds=0.0, rng={}, git="", versions={}, extra={})
    save_checkpoint(ck, str(path))
    return net


@pytest.fixture
def eval_data(tmp_path):
    """A two-class ImageFolder (train/ and val/) of 32-px random images."""
    rng = np.random.default_rng(1)
    root = tmp_path / "evaldata"
    for split in ("train", "val"):
        for c in ("a", "b"):
            os.makedirs(root / split / c)
            for i in range(8):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return str(root)


def test_loss_equals_a_hand_computed_reference():
    s, t, T = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.0, 1.0, 3.0]]), 2.0
    p = [math.exp(v / T) for v in t[0].tolist()]
    p = [v / sum(p) for v in p]
    q = [math.exp(v / T) for v in s[0].tolist()]
    q = [v / sum(q) for v in q]
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert distill.kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)
    # batchmean: the sum over the batch divided by its size
    two = distill.kd_loss(torch.cat([s, s]), torch.cat([t, t]), T)
    assert two.item() == pytest.approx(expected, rel=1e-5)


def test_loss_tends_to_zero_with_large_temperature_and_is_zero_for_equal_logits():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    assert distill.kd_loss(s, s.clone(), 8.0).item() == pytest.approx(0.0, abs=1e-6)
    losses = [distill.kd_loss(s, t, T).item() for T in (1.0, 10.0, 1000.0)]
    assert losses[0] > losses[1] > losses[2] and losses[2] < 1e-5


def test_cutmix_keeps_shapes_and_box_area_matches_lambda():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 32, 32).contiguous()
    for _ in range(20):
        out, lam = distill.cutmix(x, 1.0, gen)
        assert out.shape == x.shape
        changed = (out != x).any(1).float().mean(dim=(1, 2))   # per image: pasted area (unless paired with itself)
        kept_area = 1 - changed.max().item()
        if changed.max() > 0:
            assert kept_area == pytest.approx(lam, abs=1e-6)
    y0, y1, x0, x1 = distill.cutmix_box(32, 32, 0.75, torch.Generator().manual_seed(1))
    assert (y1 - y0) * (x1 - x0) <= 0.25 * 32 * 32 + 1


def test_checkpoint_and_torchvision_teachers_load(tmp_path, monkeypatch):
    net = write_teacher(tmp_path / "t.pt")
    teacher = distill.load_teacher(str(tmp_path / "t.pt"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(teacher(x), net.eval()(x)) and not any(p.requires_grad for p in teacher.parameters())
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    with pytest.raises(Exception, match="weights not found offline"):
        distill.load_teacher("torchvision:mobilenet_v3_small")
    sd = torchvision.models.mobilenet_v3_small(weights=None).state_dict()
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    os.makedirs(os.path.dirname(path))
    torch.save(sd, path)
    tv = distill.load_teacher("torchvision:mobilenet_v3_small")
    assert distill.num_classes(tv) == 1000
    assert all(torch.equal(tv.net.state_dict()[k], v) for k, v in sd.items())
    with pytest.raises(Exception, match="no such torchvision classifier"):
        distill.load_teacher("torchvision:nonesuch")


def agreement(student, teacher, shards):
    """(top-1 agreement, KL(teacher || student) at the training temperature, T = 8) on the 64 patches of a
    held-out toy set."""
    from tests.toyset import make_toy_set
    from train.loader import make_loader

    make_toy_set(shards, count=64, size=32, per_shard=64, seed=7)
    x = next(iter(make_loader(shards, batch_size=64, workers=0, seed=0).epoch(0)))[0].float() / 127.5 - 1
    with torch.no_grad():
        s, t = student.eval()(x), teacher.eval()(x)
    return (s.argmax(1) == t.argmax(1)).float().mean().item(), distill.kd_loss(s, t, 8.0).item()


def test_few_steps_raise_agreement_and_keep_the_teacher(eval_data, tmp_path):
    from tests.toyset import make_toy_set

    # enough patches that 40 steps generalise to held-out ones rather than memorise 64
    toy_set = make_toy_set(str(tmp_path / "toy"), count=512, size=32, per_shard=128)
    # a teacher seed other than the student's --seed 0: the same seed would make the student start as a copy
    teacher = write_teacher(tmp_path / "t.pt", seed=1234)
    before = distill.param_hash(teacher)
    out = tmp_path / "run"
    r = invoke("--shards", toy_set, "--teacher", tmp_path / "t.pt", "--eval-data", eval_data, "--eval-dataset",
               "imagefolder", "--out", out, "--max-steps", 1, *FAST)
    assert r.exit_code == 0, r.output
    first = SmallClassifier(EncoderSpec(arch="small"), 2, 32)
    first.load_state_dict(load_checkpoint(str(out))["state"]["model"])
    r = invoke("--shards", toy_set, "--teacher", tmp_path / "t.pt", "--eval-data", eval_data, "--eval-dataset",
               "imagefolder", "--out", tmp_path / "long", "--max-steps", 40, "--epochs", 10, *FAST)
    assert r.exit_code == 0, r.output
    last = SmallClassifier(EncoderSpec(arch="small"), 2, 32)
    last.load_state_dict(load_checkpoint(str(tmp_path / "long"))["state"]["model"])
    held_out = str(tmp_path / "held-out")
    # a random 2-class teacher says one class for almost every toy patch, so top-1 agreement starts near 1
    # and says nothing; agreement is measured on the soft outputs the loss targets: KL(teacher || student) falls
    (_, kl0), (_, kl1) = agreement(first, teacher, held_out), agreement(last, teacher, held_out)
    assert kl1 < kl0
    lines = logs(tmp_path / "long")
    t = [l for l in lines if l.get("event") == "teacher"][0]
    assert t["teacher_sha256"] == before and "teacher_top1" in t
    assert [l for l in lines if l.get("event") == "epoch"][-1]["eval_top1"] >= 0
    assert distill.param_hash(distill.load_teacher(str(tmp_path / "t.pt"))) == before


def test_stop_and_resume_mid_epoch_equals_one_run(toy_set, eval_data, tmp_path):
    write_teacher(tmp_path / "t.pt")
    common = ["--shards", toy_set, "--teacher", tmp_path / "t.pt", "--eval-data", eval_data,
              "--eval-dataset", "imagefolder", "--epochs", 2, *FAST]
    assert invoke("--out", tmp_path / "once", "--max-steps", 6, *common).exit_code == 0
    assert invoke("--out", tmp_path / "twice", "--max-steps", 6, "--stop-at-step", 3, *common).exit_code == 0
    r = invoke("--out", tmp_path / "twice", "--max-steps", 6, "--resume", *common)
    assert r.exit_code == 0, r.output
    a, b = load_checkpoint(str(tmp_path / "once")), load_checkpoint(str(tmp_path / "twice"))
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])
    # the resume logged the teacher's score from when the run began, not a second evaluation
    first, again = [l for l in logs(tmp_path / "twice") if l.get("event") == "teacher"]
    assert first["measured"] == "at the start of this run" and again["measured"].startswith("when the run began")
    assert again["teacher_top1"] == first["teacher_top1"] and again["teacher_sha256"] == first["teacher_sha256"]


def test_resume_with_another_teacher_is_refused(toy_set, eval_data, tmp_path):
    write_teacher(tmp_path / "t.pt")
    common = ["--shards", toy_set, "--teacher", tmp_path / "t.pt", "--eval-data", eval_data,
              "--eval-dataset", "imagefolder", "--out", tmp_path / "run", "--max-steps", 4, *FAST]
    assert invoke("--stop-at-step", 2, *common).exit_code == 0
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    write_teacher(tmp_path / "t.pt", seed=5)              # other parameters at the same path
    r = invoke("--resume", *common)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "its parameters differ from the teacher this run began with" in r.output
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_imagenet_recipe_is_the_references_view():
    from train.loader.views import SingleView, ViewSpec, view

    spec = distill.imagenet_view(24)
    assert (spec.scale, spec.jitter, spec.jitter_p, spec.grey_p, spec.solarize_p, spec.blur_p, spec.interpolation) == \
        ((0.08, 1.0), (0.4, 0.4, 0.4, 0.4), 0.8, 0.2, 0.2, 0.0, "bicubic")
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 40, 40), dtype=np.uint8))
    one = SingleView(spec)(img, torch.Generator().manual_seed(3))
    assert one.shape == (3, 24, 24) and one.dtype == torch.uint8
    assert torch.equal(one, SingleView(spec)(img, torch.Generator().manual_seed(3)))   # seeded: reproducible
    # the crop is bicubic, not bilinear; greyscale with p 1 gives equal channels
    plain = dict(jitter_p=0.0, grey_p=0.0, blur_p=0.0)
    bicubic = view(img, ViewSpec(24, interpolation="bicubic", **plain), torch.Generator().manual_seed(1))
    bilinear = view(img, ViewSpec(24, **plain), torch.Generator().manual_seed(1))
    assert not torch.equal(bicubic, bilinear)
    grey = view(img, ViewSpec(24, jitter_p=0.0, grey_p=1.0, blur_p=0.0), torch.Generator().manual_seed(1))
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


@pytest.mark.parametrize("case", ["no_head", "classes", "arch", "temperature_0", "temperature_nan",
                                  "temperature_inf"])
def test_bad_input_is_one_line(case, toy_set, eval_data, tmp_path):
    write_teacher(tmp_path / "t.pt", classes=3 if case == "classes" else 2,
                  method="rotnet" if case == "no_head" else "supervised")
    extra = {"arch": ["--student-arch", "alexnet"], "temperature_0": ["--temperature", "0"],
             "temperature_nan": ["--temperature", "nan"], "temperature_inf": ["--temperature", "inf"]}.get(case, [])
    r = invoke("--shards", toy_set, "--teacher", tmp_path / "t.pt", "--eval-data", eval_data, "--eval-dataset",
               "imagefolder", "--out", tmp_path / "run", "--max-steps", 1, *FAST, *extra)
    assert r.exit_code != 0 and "Traceback" not in r.output and r.exception is None or \
        isinstance(r.exception, SystemExit), r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and ("--temperature" in errors[0] if "temperature" in case else True), r.output
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_wrn_student_checkpoint_loads_in_probe_top1(toy_set, eval_data, tmp_path):
    from probe import top1

    write_teacher(tmp_path / "t.pt")
    out = tmp_path / "run"
    r = invoke("--shards", toy_set, "--teacher", tmp_path / "t.pt", "--eval-data", eval_data, "--eval-dataset",
               "imagefolder", "--out", out, "--max-steps", 1, "--student-arch", "wrn16_4", *FAST)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(top1.cli, ["--checkpoint", str(out), "--data", eval_data, "--out",
                                      str(tmp_path / "top1.json"), "--workers", "0"])
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "top1.json").read_text())
    assert record["classes"] == 2 and 0 <= record["top1"] <= 100
    # and its layers in probe.linear, like any other encoder's (the backbone checked unchanged afterwards)
    from probe import linear

    r = CliRunner().invoke(linear.main, ["--checkpoint", str(out), "--dataset", "imagefolder", "--data-root", eval_data,
                                        "--out", str(tmp_path / "probe"), "--epochs", "1", "--workers", "0",
                                        "--batch-size", "8", "--device", "cpu", "--protocol", "cifar"])
    assert r.exit_code == 0, r.output
    probe = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert len(probe["layers"]) >= 3 and all(0 <= probe["top1"][l] <= 100 for l in probe["layers"])
    assert probe["backbone_unchanged"] is True
