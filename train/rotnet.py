"""RotNet on a shard set: predict which of four rotations (0, 90, 180, 270 degrees) an image shows.

``python -m train.rotnet --shards SET --out DIR``. Every image of a batch enters in all four rotations
(B images -> 4B inputs), as in Gidaris et al.'s code. Defaults follow that code (docs/training.md):
batch 192, SGD with Nesterov momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 at epochs 15, 30
and 45, 50 epochs. The network is the paper's AlexNet-BN (96/256/384/384/256), wider than RotNet's
own 64/192/384/256/256, with fc6/fc7 and a 4-way top layer; ``--arch small`` is the small encoder of
the paper's section 4.2 with one linear layer, for CIFAR-sized sets.

Variants (docs/variants.md): the paper's non-scaled random crop (``--crop-mode fixed``) and dropout 0.5
before fc6/fc7 are the defaults; ``--variant released`` takes the released code's RandomSizedCrop + flip
(``--crop-mode resized``) and its fc block without dropout (``--fc-dropout 0``).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import click
import torch

from train.classifier import ARCH_CHOICES, DEFAULT_INPUT, build_classifier, cross_entropy_step, score, sgd
from train.config import CommonConfig, command, option
from train.loader import center_crop, make_loader, prepare, random_crop_flip, random_resized_crop_flip, with_transform
from train.loop import Method, echo_stats, fit
from train.models import EncoderSpec
from train.schedules import milestone_steps, planned_steps, set_lr, step_factor
from train.run import Run, unwrap

# Evaluation reads its own epoch of the set (an epoch index no training run reaches), centre crops.
EVAL_EPOCH = 10**6


@dataclass(frozen=True)
class Config(CommonConfig):
    out: str = "runs/rotnet"
    batch_size: int = 192
    epochs: int = 50
    arch: str = option("alexnet", "Encoder: AlexNet-BN, or the paper's small encoder for S = 32 sets.",
                       choices=ARCH_CHOICES)
    crop: int = option(0, "Random crop side; 0: 224 of S=256 (alexnet) or 32 of S=32 (small).", lo=0)
    lr: float = option(0.01, "Learning rate.", lo=0, lo_open=True)
    momentum: float = option(0.9, "SGD momentum.", lo=0, hi=1, hi_open=True)
    nesterov: bool = option(True, "Nesterov momentum.")
    weight_decay: float = option(5e-4, "L2 weight decay.", lo=0)
    milestones: tuple[int, ...] = option((15, 30, 45), "Epochs at which the lr is multiplied by --gamma.")
    gamma: float = option(0.1, "lr multiplier at each milestone.", lo=0, lo_open=True)
    eval_batches: int = option(10, "Batches of the fixed evaluation epoch scored after each epoch.", lo=0)
    variant: str = option("paper", "Sets --crop-mode and --fc-dropout at once (docs/variants.md); explicit "
                          "options win.", choices=("paper", "released"))
    crop_mode: str = option("fixed", "fixed: the paper's non-scaled random crop + flip; resized: the released "
                            "RandomSizedCrop (area 0.08..1, aspect 3/4..4/3, resized to the crop) + flip.",
                            choices=("fixed", "resized"))
    fc_dropout: float = option(0.5, "Dropout before fc6 and fc7 (--arch alexnet; the released fc block: 0).",
                               lo=0, hi=1, hi_open=True)

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("arch", "crop", "fc_dropout")
    VARIANTS: ClassVar[dict] = {"released": {"crop_mode": "resized", "fc_dropout": 0.0}}

    @property
    def input_size(self) -> int:
        return self.crop or DEFAULT_INPUT[self.arch]


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """N x C x H x W square images -> (4N inputs: all N rotated by 0, 90, 180, 270 degrees; labels 0..3)."""
    x4 = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])
    y = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return x4, y


class RotNet(Method):
    name, Config = "rotnet", Config

    def _loader(self, run: Run):
        """RotNet's native augmentation (random crop + h-flip, or a random-resized crop + h-flip). Default
        crops accept only the set size they were designed for (224 of 256, 32 of 32); an explicit ``--crop``
        any set at least that large."""
        cfg, size = self.cfg, self.cfg.input_size
        m = self.manifest()
        if cfg.crop and m.size < size:
            raise click.ClickException(f"{m.root}: patches are {m.size} pixels, smaller than --crop {size}; "
                                       f"lower --crop or render with a larger --size")
        sizes = None if cfg.crop else ((256,) if cfg.arch == "alexnet" else (32,))
        return make_loader(m, batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed,
                           transform=random_crop_flip(size) if cfg.crop_mode == "fixed" else
                           random_resized_crop_flip(size), rank=run.dist.rank, world_size=run.dist.world_size,
                           sizes=sizes, pin_memory=run.device.type == "cuda", verify_stream=cfg.verify_stream)

    def build(self, run: Run) -> dict:
        cfg = self.cfg
        self.loader = self._loader(run)
        self.eval_loader = with_transform(self.loader, center_crop(cfg.input_size))
        self.model = run.wrap(build_classifier(EncoderSpec(arch=cfg.arch), 4, cfg.input_size, cfg.fc_dropout))
        self.encoder = unwrap(self.model).encoder
        self.opt = sgd(self.model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
        # lr milestones as the same fraction of the planned steps (a step budget keeps the decays)
        self.milestone_steps = milestone_steps(cfg.milestones, cfg.epochs,
                                               planned_steps(cfg, self.loader.batches_per_epoch))
        return {"model": self.model, "optimizer": self.opt}

    def begin_epoch(self, run: Run, epoch: int, skip: int) -> None:
        self.model.train()

    def step(self, run: Run, batch) -> dict:
        set_lr(self.opt, self.cfg.lr * step_factor(run.step, self.milestone_steps, self.cfg.gamma))
        x, y = rotations(prepare(batch[0], run.device))
        return cross_entropy_step(run, self.model, [self.opt], x, y)

    def evaluate(self, run: Run) -> dict:
        """Rotation accuracy and loss on the first ``--eval-batches`` centre-cropped batches of a fixed
        epoch. Not a held-out split: every patch of a single-image set comes from the same image, so this
        measures how well the pretext task is solved, not generalisation to other images."""
        batches = itertools.islice(self.eval_loader.epoch(EVAL_EPOCH), self.cfg.eval_batches)
        return score(run, self.model, batches, lambda b: rotations(prepare(b[0], run.device)))


def main(cfg: Config) -> dict:
    """Train RotNet as configured; returns the last epoch's statistics."""
    return fit(RotNet(cfg))


cli = command(Config, lambda cfg: echo_stats(main(cfg)), "Train RotNet (4-way rotation prediction) on a shard set.")

if __name__ == "__main__":
    cli()
