"""SimCLR and DINO: what each adds to the loop (its loss, views, teacher), that a few steps lower the
loss on a tiny set, and that the checkpoints load in the probes unchanged."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from probe.backbone import load_backbone
from tests.toyset import make_toy_set
from train import dino, simclr
from train.checkpoint import load_checkpoint
from train.loader.views import MultiView, ViewSpec

TINY = ["--arch", "small", "--batch-size", "16", "--workers", "0", "--device", "cpu", "--log-every", "1"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_set(str(tmp_path_factory.mktemp("ssl") / "toy"), count=32, size=32, per_shard=16)


def train_losses(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f.read().splitlines()[1:]) if r.get("event") == "train"]


def test_nt_xent_equals_the_definition():
    g = torch.Generator().manual_seed(0)
    z1, z2, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), 0.3
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    terms = []
    for i in range(10):
        j = (i + 5) % 10
        sims = torch.stack([z[i] @ z[k] / t for k in range(10) if k != i])
        terms.append(-(z[i] @ z[j] / t) + torch.logsumexp(sims, 0))
    assert simclr.nt_xent(z1, z2, t).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_views_are_seeded_sized_and_differ():
    img = (torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    mv = MultiView((ViewSpec(24), ViewSpec(24), ViewSpec(12, scale=(0.05, 0.4))))
    a = mv(img, torch.Generator().manual_seed(7))
    b = mv(img, torch.Generator().manual_seed(7))
    assert [v.shape for v in a] == [(3, 24, 24), (3, 24, 24), (3, 12, 12)] and all(v.dtype == torch.uint8 for v in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], a[1])


def test_simclr_steps_lower_the_loss(toy, tmp_path):
    from train.run import Run

    method = simclr.SimCLR(simclr.Config(shards=toy, out=str(tmp_path / "s"), arch="small", batch_size=16,
                                         workers=0, device="cpu", proj_hidden=64, proj_dim=32,
                                         warmup_epochs=0))   # at step 0 a warm-up would hold the lr at 0
    run = Run(method.cfg, "simclr")
    method.build(run)
    method.begin_epoch(run, 0, 0)
    batch = next(iter(method.loader.epoch(0)))       # the same views: only the network moves
    losses = [method.step(run, batch)["loss"].item() for _ in range(8)]
    assert losses[-1] < 0.9 * losses[0]
    run.close()


def test_simclr_cli_trains_and_the_probes_read_it(toy, tmp_path):
    out = tmp_path / "simclr"
    r = CliRunner().invoke(simclr.cli, ["--shards", toy, "--out", str(out), *TINY, "--epochs", "1",
                                        "--proj-hidden", "64", "--proj-dim", "32"])
    assert r.exit_code == 0, r.output
    assert len(train_losses(out)) == 2 and all(math.isfinite(v) for v in train_losses(out))
    ck = load_checkpoint(str(out))
    assert ck["method"] == "simclr" and set(ck["state"]) == {"model", "optimizer"}
    bb = load_backbone(str(out))
    assert bb.encoder.spec.arch == "small"


def test_dino_loss_is_the_cross_entropy_of_teacher_and_student_views():
    g = torch.Generator().manual_seed(0)
    n, k = 3, 6
    s, t, c = torch.randn(4 * n, k, generator=g), torch.randn(2 * n, k, generator=g), torch.randn(1, k, generator=g)
    got = dino.dino_loss(s, t, c, 2, 0.1, 0.04)
    tp = F.softmax((t - c) / 0.04, -1).chunk(2)
    sp = F.log_softmax(s / 0.1, -1).chunk(4)
    want = torch.stack([-(tp[i] * sp[j]).sum(-1).mean() for i in range(2) for j in range(4) if i != j]).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def dino_cfg(toy, out, **kw):
    base = dict(shards=toy, out=str(out), arch="small", batch_size=16, workers=0, device="cpu", epochs=2,
                local_crops=2, out_dim=64, hidden=32, bottleneck=16, log_every=1)
    return dino.Config(**(base | kw))


def test_dino_teacher_follows_the_ema_schedule_and_gets_no_gradient(toy, tmp_path):
    method = dino.DINO(dino_cfg(toy, tmp_path / "d"))
    from train.run import Run

    run = Run(method.cfg, "dino")
    method.build(run)
    ema = [method.schedule(k)["ema"] for k in range(method.total)]
    assert ema[0] == pytest.approx(0.996) and ema[-1] == pytest.approx(1.0)      # 1 at the last planned step
    assert ema == pytest.approx([1 - 0.004 * (math.cos(math.pi * k / (method.total - 1)) + 1) / 2
                                 for k in range(method.total)])
    before = [p.clone() for p in method.teacher.parameters()]
    s_before = [p.clone() for p in method.student.parameters()]
    batch = next(iter(method.loader.epoch(0)))
    method.begin_epoch(run, 0, 0)
    method.step(run, batch)
    assert all(p.grad is None for p in method.teacher.parameters())
    m = method.schedule(0)["ema"]
    for t0, s0, t1, s1 in zip(before, s_before, method.teacher.parameters(), method.student.parameters()):
        # the EMA mixes the teacher with the updated student: t1 = m t0 + (1 - m) s1
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s1.detach(), rtol=1e-5, atol=1e-6)
    assert method.center.abs().sum() > 0
    run.close()


def test_dino_student_steps_lower_its_loss_against_the_teacher(toy, tmp_path):
    method = dino.DINO(dino_cfg(toy, tmp_path / "d", lr=0.05, warmup_epochs=0))   # step 0 of a warm-up: lr 0
    from train.run import Run

    run = Run(method.cfg, "dino")
    method.build(run)
    method.begin_epoch(run, 0, 0)
    batch = next(iter(method.loader.epoch(0)))
    method.update_teacher = lambda step: None        # a fixed teacher and centre: the student must move
    method.update_center = lambda t: None            # towards their targets
    losses = [method.step(run, batch)["loss"].item() for _ in range(8)]
    assert losses[-1] < losses[0]
    run.close()


def test_dino_cli_resume_is_exact_and_the_probes_read_it(toy, tmp_path):
    args = ["--shards", toy, *TINY, "--epochs", "2", "--local-crops", "1", "--out-dim", "64", "--hidden", "32",
            "--bottleneck", "16"]
    a, b = tmp_path / "a", tmp_path / "b"
    # one job stopped at step 3 of the 4-step plan (2 epochs of 2 batches), then resumed
    assert CliRunner().invoke(dino.cli, [*args, "--out", str(a), "--stop-at-step", "3"]).exit_code == 0
    r = CliRunner().invoke(dino.cli, [*args, "--out", str(a), "--resume"])
    assert r.exit_code == 0, r.output
    assert CliRunner().invoke(dino.cli, [*args, "--out", str(b)]).exit_code == 0
    ca, cb = load_checkpoint(str(a)), load_checkpoint(str(b))
    assert ca["step"] == cb["step"] == 4 and torch.equal(ca["extra"]["center"], cb["extra"]["center"])
    assert all(torch.equal(ca["encoder"][k], cb["encoder"][k]) for k in ca["encoder"])
    assert math.isfinite(train_losses(a)[-1]) and load_backbone(str(a)).encoder.spec.arch == "small"


# --------------------------------------------------------------------------- the references' recipes


def built(method_cls, cfg):
    from train.run import Run

    method = method_cls(cfg)
    method.check()
    run = Run(method.cfg, method.name)
    method.build(run)
    return method, run


def test_simclr_recipe_follows_the_patch_size_and_an_explicit_option_wins(toy, tmp_path):
    cfg = simclr.resolve(simclr.Config(shards=toy), 32)
    assert (cfg.recipe, cfg.strength, cfg.blur_p, cfg.temperature, cfg.lr) == ("cifar", 0.5, 0.0, 0.5, 1.0)
    big = simclr.resolve(simclr.Config(shards=toy, temperature=0.2), 256)
    assert (big.recipe, big.strength, big.blur_p, big.temperature) == ("imagenet", 1.0, 0.5, 0.2)
    method, run = built(simclr.SimCLR, simclr.Config(shards=toy, out=str(tmp_path / "s"), arch="small",
                                                     batch_size=16, workers=0, device="cpu"))
    assert method.cfg.recipe == "cifar" and run.cfg.recipe == "cifar"        # the log records what ran
    assert method.model.head[0].out_features == method.encoder.out_channels   # the feature width
    run.close()


def test_simclr_lr_warms_up_then_follows_the_cosine_to_zero_at_the_last_planned_step(toy, tmp_path):
    method, run = built(simclr.SimCLR, simclr.Config(shards=toy, out=str(tmp_path / "s"), arch="small",
                                                     batch_size=16, workers=0, device="cpu", max_steps=40,
                                                     epochs=100, warmup_epochs=10))
    base = 1.0 * 16 / 256
    assert (method.total, method.warmup) == (40, 4)                  # 10 of 100 epochs: 10 % of the plan
    assert method.lr_at(0) == 0 and method.lr_at(2) == pytest.approx(base / 2)
    assert method.lr_at(4) == pytest.approx(base) and method.lr_at(39) == pytest.approx(0, abs=1e-12)
    assert method.lr_at(20) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 16 / 35)))
    run.close()


def test_dino_convnet_recipe_param_groups_and_schedules(toy, tmp_path):
    method, run = built(dino.DINO, dino_cfg(toy, tmp_path / "d", max_steps=30, epochs=100, warmup_epochs=10))
    c = method.cfg
    assert (c.recipe, c.optimizer, c.lr, c.weight_decay, c.weight_decay_end) == ("convnet", "sgd", 0.03, 1e-4, 1e-4)
    assert c.global_crops_scale == (0.14, 1.0) and c.local_crops_scale == (0.05, 0.14)
    assert isinstance(method.opt, torch.optim.SGD)
    assert dino.JITTER == (0.4, 0.4, 0.2, 0.1)                                  # DataAugmentationDINO's
    decay, plain = method.opt.param_groups
    names = {id(p): n for n, p in method.student.named_parameters()}
    assert all(p.ndim > 1 and not names[id(p)].endswith(".bias") for p in decay["params"])
    assert all(names[id(p)].endswith(".bias") or p.ndim == 1 for p in plain["params"]) and plain["weight_decay"] == 0
    assert any("bn" in names[id(p)] or ".1." in names[id(p)] for p in plain["params"])   # norm weights too
    base = 0.03 * 16 / 256
    sched = [method.schedule(k) for k in range(30)]
    assert method.warmup == 3 and sched[0]["lr"] == 0 and sched[3]["lr"] == pytest.approx(base)
    assert sched[-1]["lr"] == pytest.approx(1e-6) and sched[-1]["ema"] == pytest.approx(1.0)
    vit = dino.resolve(dino_cfg(toy, tmp_path / "v", recipe="vit"))
    assert (vit.optimizer, vit.weight_decay, vit.weight_decay_end, vit.global_crops_scale) == (
        "adamw", 0.04, 0.4, (0.4, 1.0))
    run.close()


def test_dino_clips_each_gradient_norm_to_clip_grad():
    layer = torch.nn.Linear(4, 3)
    layer.weight.grad = torch.full_like(layer.weight, 10.0)         # norm sqrt(12) * 10 ~ 34.6
    layer.bias.grad = torch.tensor([0.1, 0.2, 0.2])                  # norm 0.3: left alone
    dino.clip_gradients(layer, 3.0)
    assert layer.weight.grad.norm().item() == pytest.approx(3.0, rel=1e-5)
    assert torch.allclose(layer.bias.grad, torch.tensor([0.1, 0.2, 0.2]))


def test_dino_global_crops_share_one_forward_and_its_batchnorm_statistics(toy):
    cfg = dino_cfg(toy, "unused")
    torch.manual_seed(0)
    net = dino.Net(dino.EncoderSpec(arch="small"), cfg)
    ref = dino.Net(dino.EncoderSpec(arch="small"), cfg)
    ref.load_state_dict(net.state_dict())
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g),
             torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g)]
    out = net.train()(views)
    feats = torch.cat([ref.encoder(torch.cat(views[:2])).mean((2, 3)), ref.encoder(torch.cat(views[2:])).mean((2, 3))])
    torch.testing.assert_close(out, ref.head(feats))
    for (name, a), (_, b) in zip(net.encoder.named_buffers(), ref.encoder.named_buffers()):
        torch.testing.assert_close(a, b, msg=name)
    # a forward per view (the old behaviour) gives other running statistics: the check can fail
    torch.manual_seed(0)
    per_view = dino.Net(dino.EncoderSpec(arch="small"), cfg).train()
    for v in views:
        per_view.encoder(v)
    assert not torch.allclose(per_view.encoder.blocks["conv1"][1].running_var,
                              net.encoder.blocks["conv1"][1].running_var)
