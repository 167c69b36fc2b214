"""DINO (Caron et al., 2021) on a shard set: ``python -m train.dino --shards SET --out DIR``.

Self-distillation with no labels: a student (encoder + projection head) matches the softmax of a
momentum teacher across views. Multi-crop: 2 global views (scale 0.4-1) and ``--local-crops`` local
views (scale 0.05-0.4, smaller side), the teacher sees only the global ones. The teacher's outputs are
centred (a running mean, momentum ``--center-momentum``) and sharpened (``--teacher-temp`` below
``--student-temp``); the teacher is an EMA of the student whose momentum rises from ``--ema`` 0.996 to 1
on a cosine over the run's steps. The encoder (AlexNet-BN or the small encoder, global average pooled)
is what the probes read. Choices and sources: docs/training.md, *DINO*.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from train.classifier import ARCH_CHOICES, DEFAULT_INPUT
from train.config import CommonConfig, command, option
from train.loader import make_loader, prepare
from train.loader.views import MultiView, ViewSpec
from train.loop import Method, echo_stats, fit
from train.models import Encoder, EncoderSpec
from train.run import Run, unwrap


@dataclass(frozen=True)
class Config(CommonConfig):
    out: str = "runs/dino"
    batch_size: int = 64
    epochs: int = 100
    arch: str = option("alexnet", "Encoder: AlexNet-BN (224 global views) or small (32).", choices=ARCH_CHOICES)
    size: int = option(0, "Global view side; 0: 224 (alexnet) or 32 (small). Local views: 96/224 of it.", lo=0)
    local_crops: int = option(8, "Local views per sample.", lo=0)
    out_dim: int = option(65536, "Prototypes (the head's output dimension).", lo=2)
    hidden: int = option(2048, "Head MLP hidden width.", lo=1)
    bottleneck: int = option(256, "Head bottleneck before the weight-normalised last layer.", lo=1)
    student_temp: float = option(0.1, "Student softmax temperature.", lo=0, lo_open=True)
    teacher_temp: float = option(0.04, "Teacher softmax temperature (sharpening).", lo=0, lo_open=True)
    center_momentum: float = option(0.9, "Momentum of the teacher-output centre.", lo=0, hi=1)
    ema: float = option(0.996, "Teacher EMA momentum at the start; it rises to 1 on a cosine.", lo=0, hi=1)
    lr: float = option(5e-4, "AdamW base learning rate, scaled by batch / 256.", lo=0, lo_open=True)
    weight_decay: float = option(0.04, "AdamW weight decay.", lo=0)

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("arch", "size", "out_dim", "hidden", "bottleneck")

    @property
    def input_size(self) -> int:
        return self.size or DEFAULT_INPUT[self.arch]


class Head(nn.Module):
    """DINO's head: 3-layer MLP (GELU) -> bottleneck -> L2 normalise -> weight-normalised linear to K."""

    def __init__(self, c: int, hidden: int, bottleneck: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1.0)   # the norm, fixed at 1 as in DINO
        self.last.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


class Net(nn.Module):
    """Encoder -> global average pool -> head; views of different sizes go through separately."""

    def __init__(self, spec: EncoderSpec, cfg: Config):
        super().__init__()
        self.encoder = Encoder(spec)
        self.head = Head(self.encoder.out_channels, cfg.hidden, cfg.bottleneck, cfg.out_dim)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.head(self.encoder(v).mean((2, 3))) for v in views])


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, n_global: int,
              t_s: float, t_t: float) -> torch.Tensor:
    """Cross-entropy between the centred, sharpened teacher of each global view and the student of every
    other view (views stacked as chunks of equal batch size)."""
    n = teacher.shape[0] // n_global
    s = (student.float() / t_s).log_softmax(-1).chunk(student.shape[0] // n)
    t = F.softmax((teacher.float() - center) / t_t, dim=-1).detach().chunk(n_global)
    terms = [-(ti * sj).sum(-1).mean() for i, ti in enumerate(t) for j, sj in enumerate(s) if i != j]
    return torch.stack(terms).mean()


class DINO(Method):
    name, Config = "dino", Config

    def build(self, run: Run) -> dict:
        cfg, g = self.cfg, self.cfg.input_size
        glob = ViewSpec(g, scale=(0.4, 1.0), blur_p=1.0)
        views = (glob, ViewSpec(g, scale=(0.4, 1.0), blur_p=0.1, solarize_p=0.2),
                 *[ViewSpec(max(8, round(g * 96 / 224)), scale=(0.05, 0.4), blur_p=0.5)] * cfg.local_crops)
        self.loader = make_loader(self.manifest(), batch_size=cfg.batch_size, workers=cfg.workers,
                                  seed=cfg.seed, transform=MultiView(views), rank=run.dist.rank,
                                  world_size=run.dist.world_size, pin_memory=run.device.type == "cuda",
                                  verify_stream=cfg.verify_stream)
        student = Net(EncoderSpec(arch=cfg.arch), cfg)
        self.teacher = copy.deepcopy(student).to(run.device).requires_grad_(False)
        self.student = run.wrap(student)
        self.encoder = unwrap(self.student).encoder
        self.opt = torch.optim.AdamW([p for p in self.student.parameters() if p.requires_grad],
                                     lr=cfg.lr * cfg.batch_size / 256, weight_decay=cfg.weight_decay)
        self.center = torch.zeros(1, cfg.out_dim, device=run.device)
        # The schedule spans --epochs (not --max-steps, a stop that a resume may lift).
        self.total = max(1, cfg.epochs * self.loader.batches_per_epoch)
        return {"student": self.student, "teacher": self.teacher, "optimizer": self.opt}

    def begin_epoch(self, run: Run, epoch: int, skip: int) -> None:
        self.student.train()
        self.teacher.train()

    def step(self, run: Run, batch) -> dict:
        views, _ = batch
        views = [prepare(v, run.device) for v in views]
        with run.autocast():
            with torch.no_grad():
                t = self.teacher(views[:2])
            s = self.student(views)
        loss = dino_loss(s, t, self.center, 2, self.cfg.student_temp, self.cfg.teacher_temp)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.update_teacher(run.step)
        self.update_center(t.float())
        return {"loss": loss.detach(), "ema": self.momentum(run.step)}

    def momentum(self, step: int) -> float:
        """Teacher momentum at ``step``: from ``--ema`` to 1 on a cosine over the run's steps."""
        return 1 - (1 - self.cfg.ema) * (math.cos(math.pi * min(step, self.total) / self.total) + 1) / 2

    @torch.no_grad()
    def update_teacher(self, step: int) -> None:
        m = self.momentum(step)
        for pt, ps in zip(self.teacher.parameters(), unwrap(self.student).parameters()):
            pt.mul_(m).add_(ps.detach(), alpha=1 - m)

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        c = teacher.mean(0, keepdim=True)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(c)
            c /= torch.distributed.get_world_size()
        self.center.mul_(self.cfg.center_momentum).add_(c, alpha=1 - self.cfg.center_momentum)

    def extra_state(self) -> dict:
        return {"center": self.center.cpu()}

    def load_extra(self, extra: dict) -> None:
        if "center" in extra:
            self.center.copy_(extra["center"])


def main(cfg: Config) -> dict:
    """Train DINO as configured; returns the last epoch's statistics."""
    return fit(DINO(cfg))


cli = command(Config, lambda cfg: echo_stats(main(cfg)), "Train DINO (self-distillation, multi-crop) on a shard set.")

if __name__ == "__main__":
    cli()
