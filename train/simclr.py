"""SimCLR (Chen et al., 2020) on a shard set: ``python -m train.simclr --shards SET --out DIR``.

Two views of every patch (RandomResizedCrop, flip, colour jitter with p = 0.8, greyscale with p = 0.2,
Gaussian blur), the encoder (AlexNet-BN or the paper's small encoder) with global average pooling, a
2-layer MLP projector as wide as the feature, and the NT-Xent loss at ``--temperature``; under DDP the
negatives are gathered from every rank and BatchNorm uses the global batch. Two named recipes
(``--recipe cifar|imagenet``; ``auto``: by the set's patch size) set the augmentation strength, blur,
temperature, lr and weight decay of SimCLR's CIFAR and ImageNet runs. The lr warms up linearly, then
decays on a cosine, over the run's planned steps. The encoder is what the probes read; the projector is
dropped after training, as in the paper. Choices and sources: docs/training.md, *SimCLR*.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
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
from train.distributed import gather, sync_batchnorm
from train.run import Run, unwrap
from train.schedules import cosine, milestone_steps, planned_steps, set_lr

# google-research/simclr: README's CIFAR-10 command (ResNet-18 at 32 px) and run.py's ImageNet defaults.
RECIPES = {
    "cifar": {"strength": 0.5, "blur_p": 0.0, "temperature": 0.5, "lr": 1.0, "weight_decay": 1e-4},
    "imagenet": {"strength": 1.0, "blur_p": 0.5, "temperature": 0.1, "lr": 0.3, "weight_decay": 1e-6},
}
CIFAR_MAX_SIZE = 64     # --recipe auto: sets of patches this small get the CIFAR recipe


@dataclass(frozen=True)
class Config(CommonConfig):
    out: str = "runs/simclr"
    batch_size: int = 256
    epochs: int = 100
    arch: str = option("alexnet", "Encoder: AlexNet-BN (224 views of S = 256 sets) or small (32 of S = 32).",
                       choices=ARCH_CHOICES)
    size: int = option(0, "View side; 0: 224 (alexnet) or 32 (small).", lo=0)
    recipe: str = option("auto", "cifar: strength 0.5, no blur, temperature 0.5, lr 1.0, wd 1e-4; imagenet: "
                         "strength 1, blur 0.5, temperature 0.1, lr 0.3, wd 1e-6; auto: cifar for patches of at "
                         f"most {CIFAR_MAX_SIZE} px, else imagenet. An option given explicitly wins.",
                         choices=("auto", *RECIPES))
    temperature: float | None = option(None, "NT-Xent temperature (default: the recipe's).", lo=0, lo_open=True)
    proj_hidden: int = option(0, "Projector hidden width (0: the encoder's feature width, as SimCLR).", lo=0)
    proj_dim: int = option(128, "Projector output (the loss's embedding).", lo=1)
    strength: float | None = option(None, "Colour-jitter strength s: (0.8s, 0.8s, 0.8s, 0.2s) (default: the "
                                    "recipe's).", lo=0)
    blur_p: float | None = option(None, "Gaussian blur probability (default: the recipe's).", lo=0, hi=1)
    lr: float | None = option(None, "Base learning rate, scaled by the global batch / 256 (default: the "
                              "recipe's).", lo=0, lo_open=True)
    warmup_epochs: int = option(10, "Linear lr warm-up, in epochs of --epochs: the same fraction of a "
                                "step-budgeted run.", lo=0)
    momentum: float = option(0.9, "SGD momentum.", lo=0, hi=1, hi_open=True)
    weight_decay: float | None = option(None, "L2 weight decay (default: the recipe's).", lo=0)

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
        hidden = hidden or c                         # SimCLR's hidden layer is as wide as the feature
        self.head = nn.Sequential(nn.Linear(c, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean((2, 3)))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, rank: int = 0) -> torch.Tensor:
    """NT-Xent: each of this rank's 2N views against the 2N' views of the global batch (``gather``; N' = N
    without DDP): its positive is the other view of its sample, every other view a negative (cosine
    similarity / temperature, cross-entropy, mean over this rank's 2N). The mean over ranks is the loss of
    the global batch, and DDP's gradient average makes its gradient that loss's."""
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    a1, a2 = gather(z1), gather(z2)
    n, total = z1.shape[0], a1.shape[0]
    every = torch.cat([a1, a2])                                  # 2N' x d: views 1 of all ranks, then views 2
    mine = torch.arange(rank * n, (rank + 1) * n, device=z1.device)
    sim = torch.cat([z1, z2]) @ every.T / temperature             # 2N x 2N'
    own = torch.cat([mine, mine + total])
    sim[torch.arange(2 * n, device=z1.device), own] = float("-inf")   # a view is not its own negative
    target = torch.cat([mine + total, mine])
    return F.cross_entropy(sim, target)


def resolve(cfg: Config, patch_size: int) -> Config:
    """``cfg`` with ``--recipe auto`` decided by the patch size and every unset option from the recipe (the
    config logged and checkpointed holds the values that ran)."""
    recipe = cfg.recipe if cfg.recipe != "auto" else ("cifar" if patch_size <= CIFAR_MAX_SIZE else "imagenet")
    unset = {k: v for k, v in RECIPES[recipe].items() if getattr(cfg, k) is None}
    return replace(cfg, recipe=recipe, **unset)


class SimCLR(Method):
    name, Config = "simclr", Config

    def check(self) -> None:
        """Missing inputs fail here; then the recipe is resolved from the set's patch size."""
        super().check()
        self.cfg = resolve(self.cfg, self.manifest().size)

    def build(self, run: Run) -> dict:
        cfg = self.cfg = resolve(self.cfg, self.manifest().size)   # fit resolved it in check already
        s = cfg.strength
        view = ViewSpec(cfg.input_size, scale=(0.08, 1.0), jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
                        jitter_p=0.8, grey_p=0.2, blur_p=cfg.blur_p)
        self.loader = make_loader(self.manifest(), batch_size=cfg.batch_size, workers=cfg.workers,
                                  seed=cfg.seed, transform=MultiView((view, view)), rank=run.dist.rank,
                                  world_size=run.dist.world_size, pin_memory=run.device.type == "cuda",
                                  verify_stream=cfg.verify_stream)
        net = sync_batchnorm(Projected(EncoderSpec(arch=cfg.arch), cfg.proj_hidden, cfg.proj_dim), run.device)
        self.model = run.wrap(net)
        self.encoder = unwrap(self.model).encoder
        # linear scaling by the global batch, as SimCLR's learning_rate_scaling=linear
        self.base_lr = cfg.lr * cfg.batch_size * run.dist.world_size / 256
        self.total = planned_steps(cfg, self.loader.batches_per_epoch)
        self.warmup = milestone_steps((cfg.warmup_epochs,), cfg.epochs, self.total)[0]
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.base_lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        return {"model": self.model, "optimizer": self.opt}

    def lr_at(self, step: int) -> float:
        """Linear warm-up from 0, then a cosine to 0 at the last planned step (a pure function of the step)."""
        return cosine(step, self.total, self.base_lr, 0.0, warmup=self.warmup)

    def begin_epoch(self, run: Run, epoch: int, skip: int) -> None:
        self.model.train()

    def step(self, run: Run, batch) -> dict:
        set_lr(self.opt, self.lr_at(run.step))
        (v1, v2), _ = batch
        x = prepare(torch.cat([v1, v2]), run.device)   # one forward: BatchNorm sees both views
        with run.autocast():
            z1, z2 = self.model(x).chunk(2)
        loss = nt_xent(z1, z2, self.cfg.temperature, run.dist.rank)
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
