"""DINO (Caron et al., 2021) on a shard set: ``python -m train.dino --shards SET --out DIR``.

Self-distillation with no labels: a student (encoder + projection head) matches the softmax of a
momentum teacher across views. Multi-crop: 2 global views and ``--local-crops`` local views (smaller
side); the teacher sees only the global ones, and each resolution goes through the encoder as one batch
(DINO's MultiCropWrapper), so BatchNorm sees the global crops together and the local crops together. The
teacher's outputs are centred and sharpened; the teacher is an EMA of the student whose momentum rises
from ``--ema`` to 1. Two recipes from DINO's README: ``convnet`` (its ResNet-50 run: SGD, lr 0.03, weight
decay 1e-4, crops 0.14-1 and 0.05-0.14), the default here, where every encoder is a convnet, and ``vit``
(AdamW, lr 5e-4, weight decay 0.04 -> 0.4, crops 0.4-1 and 0.05-0.4). As main_dino.py: a linear lr
warm-up then a cosine to ``--min-lr``, the weight decay on a cosine, no weight decay on biases and norm
parameters, per-parameter gradient clipping at ``--clip-grad``, the last layer frozen for
``--freeze-last-layer`` epochs, and BatchNorm over the global batch under DDP. Every schedule runs over
the run's planned steps. The encoder is what the probes read. Choices and sources: docs/training.md, *DINO*.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import ClassVar

import click

import torch
import torch.nn.functional as F
from torch import nn

from train.classifier import ARCH_CHOICES, DEFAULT_INPUT
from train.config import CommonConfig, command, option
from train.loader import make_loader, prepare
from train.loader.views import MultiView, ViewSpec
from train.loop import Method, echo_stats, fit
from train.models import Encoder, EncoderSpec
from train.distributed import sync_batchnorm
from train.run import Run, unwrap
from train.schedules import cosine, milestone_steps, planned_steps

# facebookresearch/dino: README's ResNet-50 command, and main_dino.py's defaults for ViTs.
RECIPES = {
    "convnet": {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "weight_decay_end": 1e-4,
                "global_crops_scale": (0.14, 1.0), "local_crops_scale": (0.05, 0.14)},
    "vit": {"optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.04, "weight_decay_end": 0.4,
            "global_crops_scale": (0.4, 1.0), "local_crops_scale": (0.05, 0.4)},
}
JITTER = (0.4, 0.4, 0.2, 0.1)      # DataAugmentationDINO: ColorJitter(brightness, contrast, saturation, hue)


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
    recipe: str = option("convnet", "convnet: SGD, lr 0.03, wd 1e-4, crops 0.14-1 / 0.05-0.14 (DINO's ResNet-50 "
                         "run); vit: AdamW, lr 5e-4, wd 0.04 -> 0.4, crops 0.4-1 / 0.05-0.4. An option given "
                         "explicitly wins.", choices=tuple(RECIPES))
    optimizer: str | None = option(None, "sgd or adamw (default: the recipe's).")
    lr: float | None = option(None, "Base learning rate, scaled by the global batch / 256 (default: the "
                              "recipe's).", lo=0, lo_open=True)
    min_lr: float = option(1e-6, "The lr at the end of the cosine.", lo=0)
    warmup_epochs: int = option(10, "Linear lr warm-up, in epochs of --epochs: the same fraction of a "
                                "step-budgeted run.", lo=0)
    weight_decay: float | None = option(None, "Weight decay at the start (default: the recipe's).", lo=0)
    weight_decay_end: float | None = option(None, "Weight decay at the end, on a cosine (default: the recipe's).",
                                            lo=0)
    clip_grad: float = option(3.0, "Clip each parameter's gradient norm to this (0: no clipping).", lo=0)
    freeze_last_layer: int = option(1, "Epochs (of --epochs, the same fraction of a step-budgeted run) during "
                                    "which the head's last layer does not train.", lo=0)
    momentum: float = option(0.9, "SGD momentum (with --optimizer sgd).", lo=0, hi=1, hi_open=True)
    global_crops_scale: tuple[float, ...] = option((), "Area range of the global crops, e.g. 0.14,1 (default: "
                                                   "the recipe's).")
    local_crops_scale: tuple[float, ...] = option((), "Area range of the local crops (default: the recipe's).")

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
    """Encoder -> global average pool -> head. Consecutive views of one size go through the encoder as one
    batch (DINO's MultiCropWrapper: BatchNorm statistics over all global crops, then all local crops)."""

    def __init__(self, spec: EncoderSpec, cfg: Config):
        super().__init__()
        self.encoder = Encoder(spec)
        self.head = Head(self.encoder.out_channels, cfg.hidden, cfg.bottleneck, cfg.out_dim)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        groups, start = [], 0
        for i in range(1, len(views) + 1):
            if i == len(views) or views[i].shape[-1] != views[start].shape[-1]:
                groups.append(torch.cat(views[start:i]))
                start = i
        feats = torch.cat([self.encoder(g).mean((2, 3)) for g in groups])   # (views x N) x C
        return self.head(feats)


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, n_global: int,
              t_s: float, t_t: float) -> torch.Tensor:
    """Cross-entropy between the centred, sharpened teacher of each global view and the student of every
    other view (views stacked as chunks of equal batch size)."""
    n = teacher.shape[0] // n_global
    s = (student.float() / t_s).log_softmax(-1).chunk(student.shape[0] // n)
    t = F.softmax((teacher.float() - center) / t_t, dim=-1).detach().chunk(n_global)
    terms = [-(ti * sj).sum(-1).mean() for i, ti in enumerate(t) for j, sj in enumerate(s) if i != j]
    return torch.stack(terms).mean()


def resolve(cfg: Config) -> Config:
    """``cfg`` with every unset option from its recipe (the config logged holds the values that ran)."""
    unset = {k: v for k, v in RECIPES[cfg.recipe].items() if getattr(cfg, k) in (None, ())}
    cfg = replace(cfg, **unset)
    if cfg.optimizer not in ("sgd", "adamw"):
        raise click.ClickException(f"--optimizer {cfg.optimizer}: use sgd or adamw")
    for name in ("global_crops_scale", "local_crops_scale"):
        lo_hi = getattr(cfg, name)
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
            raise click.ClickException(f"--{name.replace('_', '-')} {','.join(map(str, lo_hi))}: give two areas "
                                       f"0 < min <= max <= 1, e.g. 0.14,1")
    return cfg


def param_groups(model: nn.Module) -> list[dict]:
    """DINO's get_params_groups: biases and norm parameters (1-D) get no weight decay."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay}, {"params": plain, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float) -> None:
    """DINO's clip_gradients: each parameter's gradient scaled down to norm ``clip`` where it exceeds it."""
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.norm(2)
            p.grad.mul_(torch.clamp(clip / (norm + 1e-6), max=1.0))


class DINO(Method):
    name, Config = "dino", Config

    def check(self) -> None:
        super().check()
        self.cfg = resolve(self.cfg)

    def build(self, run: Run) -> dict:
        cfg = self.cfg = resolve(self.cfg)
        g = cfg.input_size
        glob, local = tuple(cfg.global_crops_scale), tuple(cfg.local_crops_scale)
        views = (ViewSpec(g, scale=glob, jitter=JITTER, blur_p=1.0),
                 ViewSpec(g, scale=glob, jitter=JITTER, blur_p=0.1, solarize_p=0.2),
                 *[ViewSpec(max(8, round(g * 96 / 224)), scale=local, jitter=JITTER, blur_p=0.5)] * cfg.local_crops)
        self.loader = make_loader(self.manifest(), batch_size=cfg.batch_size, workers=cfg.workers,
                                  seed=cfg.seed, transform=MultiView(views), rank=run.dist.rank,
                                  world_size=run.dist.world_size, pin_memory=run.device.type == "cuda",
                                  verify_stream=cfg.verify_stream)
        self.student = run.wrap(sync_batchnorm(Net(EncoderSpec(arch=cfg.arch), cfg), run.device))
        # copied after the wrap: DDP has broadcast rank 0's weights, so every rank starts the same teacher
        self.teacher = copy.deepcopy(unwrap(self.student)).requires_grad_(False)
        self.encoder = unwrap(self.student).encoder
        groups = param_groups(self.student)
        self.base_lr = cfg.lr * cfg.batch_size * run.dist.world_size / 256
        self.opt = (torch.optim.SGD(groups, lr=self.base_lr, momentum=cfg.momentum) if cfg.optimizer == "sgd"
                    else torch.optim.AdamW(groups, lr=self.base_lr))
        self.center = torch.zeros(1, cfg.out_dim, device=run.device)
        self.total = planned_steps(cfg, self.loader.batches_per_epoch)
        self.warmup, self.frozen_last = milestone_steps((cfg.warmup_epochs, cfg.freeze_last_layer), cfg.epochs,
                                                        self.total)
        return {"student": self.student, "teacher": self.teacher, "optimizer": self.opt}

    def schedule(self, step: int) -> dict[str, float]:
        """lr (warm-up, then cosine to --min-lr), weight decay and teacher momentum at ``step`` of the plan."""
        c = self.cfg
        return {"lr": cosine(step, self.total, self.base_lr, c.min_lr, warmup=self.warmup),
                "wd": cosine(step, self.total, c.weight_decay, c.weight_decay_end),
                "ema": cosine(step, self.total, c.ema, 1.0)}

    def begin_epoch(self, run: Run, epoch: int, skip: int) -> None:
        self.student.train()
        self.teacher.train()

    def step(self, run: Run, batch) -> dict:
        now = self.schedule(run.step)
        for i, group in enumerate(self.opt.param_groups):
            group["lr"] = now["lr"]
            if i == 0:                         # the regularised group
                group["weight_decay"] = now["wd"]
        views, _ = batch
        views = [prepare(v, run.device) for v in views]
        with run.autocast():
            with torch.no_grad():
                t = self.teacher(views[:2])
            s = self.student(views)
        loss = dino_loss(s, t, self.center, 2, self.cfg.student_temp, self.cfg.teacher_temp)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip_grad:
            clip_gradients(self.student, self.cfg.clip_grad)
        if run.step < self.frozen_last:        # DINO's cancel_gradients_last_layer
            for p in unwrap(self.student).head.last.parameters():
                p.grad = None
        self.opt.step()
        self.update_teacher(now["ema"])
        self.update_center(t.float())
        return {"loss": loss.detach(), "ema": now["ema"], "wd": now["wd"]}

    @torch.no_grad()
    def update_teacher(self, m: float) -> None:
        """teacher = m * teacher + (1 - m) * student."""
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
