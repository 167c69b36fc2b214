"""Schedules over the planned steps: a step-budgeted run ends every schedule at its last step."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from train.schedules import cosine, milestone_steps, planned_steps, progress, step_factor


def test_planned_steps_is_epochs_cut_at_max_steps():
    assert planned_steps(SimpleNamespace(epochs=10000, max_steps=300), 781) == 300
    assert planned_steps(SimpleNamespace(epochs=2, max_steps=0), 781) == 1562
    assert planned_steps(SimpleNamespace(epochs=2, max_steps=5000), 781) == 1562


@pytest.mark.parametrize("total,warmup", [(1, 0), (2, 0), (300, 0), (300, 30), (7, 6)])
def test_cosine_reaches_its_end_value_at_the_last_step(total, warmup):
    start, end = 0.3, 1e-6
    last = cosine(total - 1, total, start, end, warmup=warmup)
    assert last == pytest.approx(end if total > 1 else start, abs=1e-12) or total == 1
    if warmup and total > warmup + 1:
        assert cosine(0, total, start, end, warmup=warmup) == 0.0
        assert cosine(warmup, total, start, end, warmup=warmup) == pytest.approx(start)
    # the midpoint of the decay is the mean of start and end
    if total > 3 and not warmup:
        mid = (total - 1) / 2
        assert cosine(int(mid), total, start, end) == pytest.approx(
            end + (start - end) * 0.5 * (1 + math.cos(math.pi * int(mid) / (total - 1))))


def test_milestones_keep_their_fraction_of_the_run():
    # torchvision's AlexNet recipe: lr / 10 at epochs 30 and 60 of 90; a 300-step budget decays at 100 and 200
    ms = milestone_steps((30, 60), 90, 300)
    assert ms == (100, 200)
    assert [step_factor(s, ms, 0.1) for s in (0, 99, 100, 199, 200, 299)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


def test_progress_is_clamped():
    assert progress(0, 10) == 0 and progress(9, 10) == 1 and progress(50, 10) == 1 and progress(3, 1) == 1


def test_a_step_budgeted_run_ends_its_lr_milestones_at_the_last_step(tmp_path):
    """RotNet's milestones 15/30/45 of 50 epochs fall at 30/60/90 % of a 6-step budget: the last step runs at
    lr x gamma^3, the schedule's end value, though the run is far shorter than 50 epochs."""
    import json

    from click.testing import CliRunner

    from tests.toyset import make_toy_set
    from train import rotnet

    shards = make_toy_set(str(tmp_path / "set"), count=32, size=32, per_shard=16)
    r = CliRunner().invoke(rotnet.cli, ["--shards", shards, "--arch", "small", "--crop", "28", "--batch-size", "4",
                                        "--workers", "0", "--device", "cpu", "--max-steps", "6", "--log-every", "1",
                                        "--eval-batches", "0", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "run" / "log.jsonl") as f:
        lrs = [rec["lr"] for rec in map(json.loads, f) if rec.get("event") == "train"]
    assert lrs == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-5])
