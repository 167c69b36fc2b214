"""The fully supervised baseline, and fine-tuning from any checkpoint (the paper's Tables 4 and 5).

``python -m train.supervised --data IMAGEFOLDER --out DIR`` trains AlexNet-BN (or ``--arch small`` on
CIFAR-sized images) with cross-entropy on an ImageFolder tree or torchvision's CIFAR-10/100 files.
``--init-from CHECKPOINT --freeze conv1,conv2`` starts from another run's encoder and keeps the named
blocks fixed (weights and BatchNorm statistics). Defaults follow torchvision's classification
reference recipe for AlexNet: SGD momentum 0.9, lr 0.01, weight decay 1e-4, lr / 10 at epochs 30
and 60, 90 epochs, batch 256 (docs/training.md).
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
from train.data import prepare
from train.engine import CommonConfig, Run, common_options, load_checkpoint, unwrap
from train.folder_data import DATASETS, FolderLoader, make_folder_loader, open_splits, transforms_for
from train.models import EncoderSpec

METHOD = "supervised"


@dataclass(frozen=True)
class Config(CommonConfig):
    data: str = ""
    dataset: str = "imagefolder"
    arch: str = "alexnet"
    size: int = 0                  # input side; 0: 224 (alexnet) or 32 (small)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] = (30, 60)
    gamma: float = 0.1
    init_from: str = ""
    freeze: tuple[str, ...] = ()
    eval_batches: int = 0          # 0: the whole evaluation split

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("arch", "size", "dataset")

    @property
    def input_size(self) -> int:
        return self.size or DEFAULT_INPUT[self.arch]


def initial_spec(cfg: Config) -> tuple[EncoderSpec, dict | None]:
    """The encoder spec to build, and the encoder weights to start from (``--init-from``)."""
    if not cfg.init_from:
        return EncoderSpec(arch=cfg.arch), None
    ck = load_checkpoint(cfg.init_from)
    spec = EncoderSpec.from_dict(ck["encoder_spec"])
    if spec.arch != cfg.arch:
        raise click.ClickException(f"--init-from {cfg.init_from} holds a {spec.arch!r} encoder, not {cfg.arch!r}; "
                                   f"pass --arch {spec.arch}")
    return spec, {k.removeprefix("module."): v for k, v in ck["encoder"].items()}


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """Classifier with the encoder initialised from ``--init-from`` and ``--freeze`` blocks fixed."""
    spec, weights = initial_spec(cfg)
    model = build_classifier(spec, num_classes, cfg.input_size)
    if weights is not None:
        try:
            model.encoder.load_state_dict(weights)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise click.ClickException(f"--init-from {cfg.init_from}: encoder weights do not fit ({first})") from None
    unknown = [n for n in cfg.freeze if n not in model.encoder.blocks]
    if unknown:
        raise click.ClickException(f"--freeze {unknown[0]}: no such block; {spec.arch} has "
                                   f"{','.join(model.encoder.layer_names)}")
    for name in cfg.freeze:
        model.encoder.blocks[name].requires_grad_(False)
    return model


def train_mode(model: nn.Module, frozen: tuple[str, ...]) -> None:
    """Training mode, except frozen blocks: their BatchNorm statistics must not move either."""
    model.train()
    for name in frozen:
        unwrap(model).encoder.blocks[name].eval()


def train_one_epoch(run: Run, model: nn.Module, loader: FolderLoader, opt: torch.optim.Optimizer,
                    epoch: int, skip: int = 0) -> dict:
    """Cross-entropy on batches ``skip..`` of ``epoch`` (or until --max-steps); mean loss and accuracy."""
    train_mode(model, run.cfg.freeze)
    return fit_epoch(run, model, loader.epoch(epoch, skip), opt, lambda b: to_xy(b, run.device),
                     f"supervised epoch {epoch}", skip)


def to_xy(batch: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = batch
    return prepare(images, device), labels.to(device, non_blocking=True)


def evaluate(run: Run, model: nn.Module, loader: FolderLoader | None, max_batches: int) -> dict:
    """Top-1 accuracy and loss on the evaluation split (centre crops), all of it unless ``max_batches``."""
    if loader is None:
        return {}
    batches = loader.epoch(0)
    if max_batches:
        batches = itertools.islice(batches, max_batches)
    return score(run, model, batches, lambda b: to_xy(b, run.device), acc_key="top1")


def main(cfg: Config) -> dict:
    """Train (or fine-tune) a supervised classifier as configured; returns the last epoch's statistics."""
    run = Run(cfg, METHOD)
    cfg = run.cfg
    splits = open_splits(cfg.data, cfg.dataset, *transforms_for(cfg.arch, cfg.input_size))
    kw = dict(batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed, rank=run.dist.rank,
              world_size=run.dist.world_size, pin_memory=run.device.type == "cuda")
    loader = make_folder_loader(splits.train, **kw)
    eval_loader = make_folder_loader(splits.eval, train=False, **kw) if splits.eval is not None else None
    model = run.wrap(build_model(cfg, len(splits.classes)))
    opt = sgd(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), gamma=cfg.gamma)
    objects = {"model": model, "optimizer": opt, "scheduler": sched}
    state = run.restore(objects)
    run.log({"event": "data", "classes": len(splits.classes), "train": len(splits.train),
             "eval": len(splits.eval) if splits.eval is not None else 0, "eval_split": splits.eval_name})
    return run_epochs(
        run, cfg, objects, unwrap(model).encoder, sched, state, loader.batches_per_epoch,
        train_epoch=lambda epoch, skip: train_one_epoch(run, model, loader, opt, epoch, skip),
        evaluate=lambda: evaluate(run, model, eval_loader, cfg.eval_batches))


def parse_list(ctx, param, value: str) -> tuple:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if param.name != "milestones":
        return items
    try:
        return tuple(sorted(int(v) for v in items))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give epochs as comma-separated integers, e.g. 30,60") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, help="ImageFolder root (train/ and val/ or test/), or CIFAR files' folder.")
@click.option("--dataset", type=click.Choice(DATASETS), default="imagefolder", show_default=True)
@common_options(exclude=("shards",), out="runs/supervised", epochs=90)
@click.option("--arch", type=click.Choice(ARCH_CHOICES), default="alexnet", show_default=True)
@click.option("--size", type=click.IntRange(0), default=0, show_default=True,
              help="Input side; 0: 224 (alexnet) or 32 (small).")
@click.option("--lr", type=float, default=0.01, show_default=True)
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--milestones", default="30,60", show_default=True, callback=parse_list,
              help="Epochs at which the lr is multiplied by --gamma.")
@click.option("--gamma", type=float, default=0.1, show_default=True)
@click.option("--init-from", default="", help="Start the encoder from this checkpoint (any trainer's).")
@click.option("--freeze", default="", callback=parse_list, help="Blocks kept fixed, e.g. conv1,conv2.")
@click.option("--eval-batches", type=click.IntRange(0), default=0, show_default=True,
              help="Evaluation batches after each epoch (0: the whole split).")
@click.option("--log-every", type=click.IntRange(1), default=20, show_default=True)
def cli(**kw) -> None:
    """Train the supervised baseline, or fine-tune a checkpoint, on labelled images."""
    cli_run(main, Config(**kw))


if __name__ == "__main__":
    cli()
