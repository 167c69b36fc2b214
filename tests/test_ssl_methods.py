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
                                         workers=0, device="cpu", proj_hidden=64, proj_dim=32))
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
    assert method.momentum(0) == pytest.approx(0.996) and method.momentum(method.total) == pytest.approx(1.0)
    assert method.momentum(method.total // 2) == pytest.approx(0.998, abs=2e-4)
    before = [p.clone() for p in method.teacher.parameters()]
    s_before = [p.clone() for p in method.student.parameters()]
    batch = next(iter(method.loader.epoch(0)))
    method.begin_epoch(run, 0, 0)
    method.step(run, batch)
    assert all(p.grad is None for p in method.teacher.parameters())
    m = method.momentum(0)
    for t0, s0, t1, s1 in zip(before, s_before, method.teacher.parameters(), method.student.parameters()):
        # the EMA mixes the teacher with the updated student: t1 = m t0 + (1 - m) s1
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s1.detach(), rtol=1e-5, atol=1e-6)
    assert method.center.abs().sum() > 0
    run.close()


def test_dino_student_steps_lower_its_loss_against_the_teacher(toy, tmp_path):
    method = dino.DINO(dino_cfg(toy, tmp_path / "d", lr=0.05))
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
    assert CliRunner().invoke(dino.cli, [*args, "--out", str(a), "--max-steps", "3"]).exit_code == 0
    r = CliRunner().invoke(dino.cli, [*args, "--out", str(a), "--resume"])
    assert r.exit_code == 0, r.output
    assert CliRunner().invoke(dino.cli, [*args, "--out", str(b)]).exit_code == 0
    ca, cb = load_checkpoint(str(a)), load_checkpoint(str(b))
    assert ca["step"] == cb["step"] == 4 and torch.equal(ca["extra"]["center"], cb["extra"]["center"])
    assert all(torch.equal(ca["encoder"][k], cb["encoder"][k]) for k in ca["encoder"])
    assert math.isfinite(train_losses(a)[-1]) and load_backbone(str(a)).encoder.spec.arch == "small"
