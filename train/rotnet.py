"""RotNet on a shard set: predict which of four rotations (0, 90, 180, 270 degrees) an image shows.

``python -m train.rotnet --shards SET --out DIR``. Every image of a batch enters in all four rotations
(B images -> 4B inputs), as in Gidaris et al.'s code. Defaults follow that code (docs/training.md):
batch 192, SGD with Nesterov momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 at epochs 15, 30
and 45, 50 epochs. The network is the paper's AlexNet-BN (96/256/384/384/256), wider than RotNet's
own 64/192/384/256/256, with fc6/fc7 and a 4-way top layer; ``--arch small`` is the small encoder of
the paper's section 4.2 with one linear layer, for CIFAR-sized sets.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import click
import torch
from torch import nn

from train.common_cli import (ARCH_CHOICES, DEFAULT_INPUT, build_classifier, cli_run, fit_epoch, run_epochs,
                              score, sgd)
from augment.manifest import read_manifest
from train.data import ShardLoader, center_crop, make_loader, prepare, random_crop_flip
from train.engine import CommonConfig, Run, common_options, unwrap
from train.models import EncoderSpec

METHOD = "rotnet"
# Evaluation reads its own epoch of the set (an epoch index no training run reaches), centre crops.
EVAL_EPOCH = 10**6


@dataclass(frozen=True)
class Config(CommonConfig):
    arch: str = "alexnet"
    crop: int = 0                 # 0: 224 for alexnet (S = 256 sets), 32 for small (S = 32, flip only)
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (15, 30, 45)
    gamma: float = 0.1
    eval_batches: int = 10

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("arch", "crop")

    @property
    def input_size(self) -> int:
        return self.crop or DEFAULT_INPUT[self.arch]


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """N x C x H x W square images -> (4N inputs: all N rotated by 0, 90, 180, 270 degrees; labels 0..3)."""
    x4 = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])
    y = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return x4, y


def build_loader(cfg: Config, run: Run, evaluation: bool = False) -> ShardLoader:
    """The shard loader with RotNet's native augmentation (random crop + h-flip; centre crop to evaluate).

    Default crops accept only the set size they were designed for (224 of 256, 32 of 32); an explicit
    ``--crop`` accepts any set at least that large.
    """
    size = cfg.input_size
    m = read_manifest(cfg.shards)
    if cfg.crop and m.size < size:
        raise click.ClickException(f"{m.root}: patches are {m.size} pixels, smaller than --crop {size}; "
                                   f"lower --crop or render with a larger --size")
    sizes = None if cfg.crop else ((256,) if cfg.arch == "alexnet" else (32,))
    transform = center_crop(size) if evaluation else random_crop_flip(size)
    return make_loader(m, batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed,
                       transform=transform, rank=run.dist.rank, world_size=run.dist.world_size,
                       sizes=sizes, pin_memory=run.device.type == "cuda")


def train_one_epoch(run: Run, model: nn.Module, loader: ShardLoader, opt: torch.optim.Optimizer,
                    epoch: int, skip: int = 0) -> dict:
    """Train on batches ``skip..`` of ``epoch`` (or until --max-steps); mean loss and rotation accuracy."""
    model.train()
    batches = loader.epoch(epoch, skip)
    return fit_epoch(run, model, batches, opt, lambda b: rotations(prepare(b[0], run.device)),
                     f"rotnet epoch {epoch}", skip)


def evaluate(run: Run, model: nn.Module, loader: ShardLoader, max_batches: int) -> dict:
    """Rotation accuracy and loss on the first ``max_batches`` centre-cropped batches of a fixed epoch.

    Not a held-out split: every patch of a single-image set comes from the same image, so this
    measures how well the pretext task is solved, not generalisation to other images.
    """
    batches = itertools.islice(loader.epoch(EVAL_EPOCH), max_batches)
    return score(run, model, batches, lambda b: rotations(prepare(b[0], run.device)))


def main(cfg: Config) -> dict:
    """Train RotNet as configured; returns the last epoch's statistics."""
    run = Run(cfg, METHOD)
    cfg = run.cfg                                   # architecture fields from the checkpoint on resume
    loader, eval_loader = build_loader(cfg, run), build_loader(cfg, run, evaluation=True)
    model = run.wrap(build_classifier(EncoderSpec(arch=cfg.arch), 4, cfg.input_size))
    opt = sgd(model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), gamma=cfg.gamma)
    objects = {"model": model, "optimizer": opt, "scheduler": sched}
    state = run.restore(objects)
    return run_epochs(
        run, cfg, objects, unwrap(model).encoder, sched, state, loader.batches_per_epoch,
        train_epoch=lambda epoch, skip: train_one_epoch(run, model, loader, opt, epoch, skip),
        evaluate=lambda: evaluate(run, model, eval_loader, cfg.eval_batches))


def parse_milestones(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return tuple(sorted(int(v) for v in value.split(",") if v.strip()))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give epochs as comma-separated integers, e.g. 15,30,45") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@common_options(batch_size=192, epochs=50, out="runs/rotnet")
@click.option("--arch", type=click.Choice(ARCH_CHOICES), default="alexnet", show_default=True)
@click.option("--crop", type=click.IntRange(0), default=0, show_default=True,
              help="Random crop side; 0: 224 of S=256 (alexnet) or 32 of S=32 (small).")
@click.option("--lr", type=float, default=0.01, show_default=True)
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--nesterov/--no-nesterov", default=True, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--milestones", default="15,30,45", show_default=True, callback=parse_milestones,
              help="Epochs at which the lr is multiplied by --gamma.")
@click.option("--gamma", type=float, default=0.1, show_default=True)
@click.option("--eval-batches", type=click.IntRange(0), default=10, show_default=True,
              help="Batches of the fixed evaluation epoch scored after each epoch.")
@click.option("--log-every", type=click.IntRange(1), default=20, show_default=True)
def cli(**kw) -> None:
    """Train RotNet (4-way rotation prediction) on a shard set."""
    cli_run(main, Config(**kw))


if __name__ == "__main__":
    cli()
