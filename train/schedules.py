"""Schedules over the steps a run will take, so that a step-budgeted run ends its schedules at its last step.

A run of ``--epochs E`` with ``--max-steps N`` plans ``min(N, E x steps per epoch)`` optimisation steps
(``planned_steps``). Every schedule here is a pure function of the step index ``s`` in ``0 .. total - 1``
(the step about to be taken), so a resumed run needs no scheduler state, and the last planned step
(``s = total - 1``) gets the schedule's end value exactly. Epoch milestones are scaled to the plan as
the same fraction of the run (``milestone 30 of 90 epochs`` -> a third of the planned steps).

``--max-steps`` may be raised on ``--resume``: the plan (and so every schedule) then follows the new
budget from that step on, and the log records the change.
"""
from __future__ import annotations

import math
from typing import Any, Sequence


def planned_steps(cfg: Any, steps_per_epoch: int) -> int:
    """The optimisation steps a run will take: ``--epochs`` x ``steps_per_epoch``, cut at ``--max-steps``."""
    total = max(1, int(cfg.epochs) * max(1, int(steps_per_epoch)))
    return min(total, int(cfg.max_steps)) if getattr(cfg, "max_steps", 0) else total


def progress(step: int, total: int) -> float:
    """Where step ``step`` lies in a run of ``total`` steps: 0 at the first, 1 at the last (clamped)."""
    return 1.0 if total <= 1 else min(max(step, 0), total - 1) / (total - 1)


def cosine(step: int, total: int, start: float, end: float = 0.0, warmup: int = 0, warmup_from: float = 0.0) -> float:
    """A linear warm-up from ``warmup_from`` to ``start`` over ``warmup`` steps, then a half cosine from
    ``start`` to ``end`` over the remaining steps (``end`` exactly at the last step)."""
    warmup = min(max(warmup, 0), total - 1)
    if step < warmup:
        return warmup_from + (start - warmup_from) * step / warmup
    t = progress(step - warmup, total - warmup)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


def milestone_steps(milestones: Sequence[int], epochs: int, total: int) -> tuple[int, ...]:
    """Epoch milestones as step indices of a ``total``-step plan: the same fraction of the run."""
    return tuple(round(m / max(epochs, 1) * total) for m in milestones)


def step_factor(step: int, milestones: Sequence[int], gamma: float) -> float:
    """``gamma`` to the number of milestones (step indices) at or before ``step``."""
    return gamma ** sum(step >= m for m in milestones)


def set_lr(optimizer: Any, lr: float) -> None:
    """Every parameter group's learning rate (a group's ``lr_scale`` multiplies it, when set)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
