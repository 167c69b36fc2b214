"""SimCLR (Chen et al., 2020) on a shard set: ``python -m train.simclr --shards SET --out DIR``.

Two views of every patch (RandomResizedCrop, flip, colour jitter with p = 0.8, greyscale with p = 0.2,
Gaussian blur), the encoder (AlexNet-BN or the paper's small encoder) with global average pooling, a
2-layer MLP projector, and the NT-Xent loss over the 2N views of a batch at ``--temperature``. The
encoder is what the probes read; the projector is dropped after training, as in the paper. Choices
and sources: docs/training.md, *SimCLR*.
"""
from __future__ import annotations

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
    out: str = "runs/simclr"
    batch_size: int = 256
    epochs: int = 100
    arch: str = option("alexnet", "Encoder: AlexNet-BN (224 views of S = 256 sets) or small (32 of S = 32).",
                       choices=ARCH_CHOICES)
    size: int = option(0, "View side; 0: 224 (alexnet) or 32 (small).", lo=0)
    temperature: float = option(0.5, "NT-Xent temperature.", lo=0, lo_open=True)
    proj_hidden: int = option(2048, "Projector hidden width.", lo=1)
    proj_dim: int = option(128, "Projector output (the loss's embedding).", lo=1)
    strength: float = option(1.0, "Colour-jitter strength s: (0.8s, 0.8s, 0.8s, 0.2s).", lo=0)
    blur_p: float = option(0.5, "Gaussian blur probability (SimCLR's CIFAR runs: 0).", lo=0, hi=1)
    lr: float = option(0.3, "Base learning rate, scaled by batch / 256.", lo=0, lo_open=True)
    momentum: float = option(0.9, "SGD momentum.", lo=0, hi=1, hi_open=True)
    weight_decay: float = option(1e-6, "L2 weight decay.", lo=0)

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("arch", "size", "proj_hidden", "proj_dim")

    @property
    def input_size(self) -> int:
        return self.size or DEFAULT_INPUT[self.arch]


class Projected(nn.Module):
    """Encoder -> global average pool (N x C) -> Linear, BN, ReLU, Linear (N x proj_dim)."""

    def __init__(self, spec: EncoderSpec, hidden: int, out: int):
        super().__init__()
        self.encoder = Encoder(spec)
        c = self.encoder.out_channels
        self.head = nn.Sequential(nn.Linear(c, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean((2, 3)))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2N embeddings: each view's positive is the other view of its sample, the 2N - 2
    other views are its negatives (cosine similarity / temperature, cross-entropy, mean over 2N)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


class SimCLR(Method):
    name, Config = "simclr", Config

    def build(self, run: Run) -> dict:
        cfg, s = self.cfg, self.cfg.strength
        view = ViewSpec(cfg.input_size, scale=(0.08, 1.0), jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
                        jitter_p=0.8, grey_p=0.2, blur_p=cfg.blur_p)
        self.loader = make_loader(self.manifest(), batch_size=cfg.batch_size, workers=cfg.workers,
                                  seed=cfg.seed, transform=MultiView((view, view)), rank=run.dist.rank,
                                  world_size=run.dist.world_size, pin_memory=run.device.type == "cuda",
                                  verify_stream=cfg.verify_stream)
        self.model = run.wrap(Projected(EncoderSpec(arch=cfg.arch), cfg.proj_hidden, cfg.proj_dim))
        self.encoder = unwrap(self.model).encoder
        self.base_lr = cfg.lr * cfg.batch_size / 256
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.base_lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        return {"model": self.model, "optimizer": self.opt}

    def begin_epoch(self, run: Run, epoch: int, skip: int) -> None:
        # Cosine decay over the epochs, a pure function of the epoch (no scheduler state to resume).
        lr = self.base_lr * 0.5 * (1 + math.cos(math.pi * epoch / self.cfg.epochs))
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.model.train()

    def step(self, run: Run, batch) -> dict:
        (v1, v2), _ = batch
        x = prepare(torch.cat([v1, v2]), run.device)   # one forward: BatchNorm sees both views
        with run.autocast():
            z1, z2 = self.model(x).chunk(2)
        loss = nt_xent(z1, z2, self.cfg.temperature)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}


def main(cfg: Config) -> dict:
    """Train SimCLR as configured; returns the last epoch's statistics."""
    return fit(SimCLR(cfg))


cli = command(Config, lambda cfg: echo_stats(main(cfg)), "Train SimCLR (two views, NT-Xent) on a shard set.")

if __name__ == "__main__":
    cli()
