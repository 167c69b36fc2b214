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
from dataclasses import dataclass, replace
from typing import ClassVar

import click
import torch
from torch import nn

from train.checkpoint import load_checkpoint
from train.classifier import CLASSIFIER_ARCHS, DEFAULT_INPUT, TRANSFORMS, build_classifier, cross_entropy_step, score, sgd
from train.config import CommonConfig, command, option
from train.loader import prepare
from train.loader.folder import DATASETS, make_folder_loader, open_splits, transforms_for
from train.loop import Method, echo_stats, fit
from train.models import EncoderSpec
from train.schedules import milestone_steps, planned_steps, set_lr, step_factor
from train.run import Run, unwrap


@dataclass(frozen=True)
class Config(CommonConfig):
    out: str = "runs/supervised"
    epochs: int = 90
    data: str = option("", "ImageFolder root (train/ and val/ or test/), or CIFAR files' folder.")
    dataset: str = option("imagefolder", "Layout of --data.", choices=DATASETS)
    arch: str = option("alexnet", "Encoder: AlexNet-BN, the paper's small encoder (32 px), WRN-16-4 / WRN-40-4 "
                       "(32 px) or ResNet-18 / ResNet-50 (224 px).", choices=CLASSIFIER_ARCHS)
    size: int = option(0, "Input side; 0: 224 (alexnet) or 32 (small).", lo=0)
    lr: float = option(0.01, "Learning rate.", lo=0, lo_open=True)
    momentum: float = option(0.9, "SGD momentum.", lo=0, hi=1, hi_open=True)
    weight_decay: float = option(1e-4, "L2 weight decay.", lo=0)
    milestones: tuple[int, ...] = option((30, 60), "Epochs at which the lr is multiplied by --gamma.")
    gamma: float = option(0.1, "lr multiplier at each milestone.", lo=0, lo_open=True)
    frontend: str = option("conv", "conv1-2: learned convolutions (conv), or a fixed 2-D scattering transform "
                           "(J = 2, L = 8) with a 1x1 adapter, the paper's Table 4 'Scattering' row.",
                           choices=("conv", "scattering"))
    adapter: bool = option(False, "A learned 1x1 conv + BN + ReLU between conv2 and conv3, trained with conv3: the "
                           "scattering frontend's adapter on a conv encoder (Table 4's adapter control).")
    init_from: str = option("", "Start the encoder from this checkpoint (any trainer's).")
    init_layers: tuple[str, ...] = option((), "Blocks taken from --init-from, e.g. conv1,conv2 (the paper's Table 5); "
                                          "the others keep their random initialisation. Empty: all.")
    freeze: tuple[str, ...] = option((), "Blocks kept fixed, e.g. conv1,conv2.")
    eval_batches: int = option(0, "Evaluation batches after each epoch (0: the whole split).", lo=0)
    skip_bad_images: bool = option(False, "Skip images that cannot be decoded (counted in the log) instead "
                                   "of stopping at the first one.")

    # --init-from shapes the model (its encoder's spec) as --arch does: a resume keeps the run's own
    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("arch", "size", "dataset", "frontend", "adapter", "init_from",
                                              "init_layers")
    UNUSED: ClassVar[tuple[str, ...]] = ("shards", "verify_stream")

    @property
    def input_size(self) -> int:
        return self.size or DEFAULT_INPUT[self.arch]


def initial_spec(cfg: Config) -> tuple[EncoderSpec, dict | None]:
    """The encoder spec to build, and the encoder weights to start from (``--init-from``)."""
    if cfg.frontend == "scattering":
        if cfg.init_from or cfg.adapter:
            raise click.ClickException(f"--frontend scattering replaces conv1-2 (with its own adapter), so "
                                       f"{'--init-from' if cfg.init_from else '--adapter'} has nothing to act on; "
                                       f"drop one of the two")
        from train.scattering import frontend_output

        try:
            frontend_output(cfg.arch, cfg.input_size)
        except ValueError as e:
            raise click.ClickException(f"--frontend scattering: {e}") from None
        return EncoderSpec(arch=cfg.arch, frontend="scattering", frontend_size=cfg.input_size), None
    if not cfg.init_from:
        return EncoderSpec(arch=cfg.arch, adapter=cfg.adapter), None
    ck = load_checkpoint(cfg.init_from)
    spec = EncoderSpec.from_dict(ck["encoder_spec"])
    keys = [k.removeprefix("module.") for k in ck["encoder"]]
    blocks = {k.split(".")[1] for k in keys if k.startswith("blocks.")}
    if spec.frontend != "conv" or not {"conv1", "conv2"} <= blocks:
        raise click.ClickException(f"--init-from {cfg.init_from}: its encoder has no conv1/conv2 to initialise "
                                   f"(frontend {spec.frontend!r}); use a checkpoint of a convolutional encoder")
    if spec.arch != cfg.arch:
        raise click.ClickException(f"--init-from {cfg.init_from} holds a {spec.arch!r} encoder, not {cfg.arch!r}; "
                                   f"pass --arch {spec.arch}")
    return replace(spec, adapter=cfg.adapter), {k.removeprefix("module."): v for k, v in ck["encoder"].items()}


def build_model(cfg: Config, num_classes: int, resumed_spec: dict | None = None) -> nn.Module:
    """Classifier with the encoder initialised from ``--init-from`` and ``--freeze`` blocks fixed;
    ``resumed_spec``: a resumed run's encoder spec (its weights come from its checkpoint, not --init-from)."""
    spec, weights = (EncoderSpec.from_dict(resumed_spec), None) if resumed_spec else initial_spec(cfg)
    model = build_classifier(spec, num_classes, cfg.input_size)
    if weights is not None:
        unknown = [n for n in cfg.init_layers if n not in model.encoder.blocks]
        if unknown:
            raise click.ClickException(f"--init-layers {unknown[0]}: no such block; {spec.arch} has "
                                       f"{','.join(model.encoder.layer_names)}")
        if cfg.init_layers:
            own = model.encoder.state_dict()
            weights = own | {k: v for k, v in weights.items() if k.split(".")[1] in cfg.init_layers}
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


class Supervised(Method):
    name, Config, needs = "supervised", Config, ("data",)

    def build(self, run: Run) -> dict:
        cfg = self.cfg
        splits = open_splits(cfg.data, cfg.dataset, *transforms_for(TRANSFORMS.get(cfg.arch, cfg.arch), cfg.input_size))
        kw = dict(batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed, rank=run.dist.rank,
                  world_size=run.dist.world_size, pin_memory=run.device.type == "cuda", skip_bad=cfg.skip_bad_images)
        self.loader = make_folder_loader(splits.train, **kw)
        self.eval_loader = make_folder_loader(splits.eval, train=False, **kw) if splits.eval is not None else None
        run.log({"event": "data", "classes": len(splits.classes), "train": len(splits.train),
                 "eval": len(splits.eval) if splits.eval is not None else 0, "eval_split": splits.eval_name})
        resumed = run.saved["encoder_spec"] if run.saved else None
        self.model = run.wrap(build_model(cfg, len(splits.classes), resumed))
        self.encoder = unwrap(self.model).encoder
        self.opt = sgd(self.model, cfg.lr, cfg.momentum, cfg.weight_decay)
        # lr milestones as the same fraction of the planned steps (a step budget keeps the decays)
        self.milestone_steps = milestone_steps(cfg.milestones, cfg.epochs,
                                               planned_steps(cfg, self.loader.batches_per_epoch))
        return {"model": self.model, "optimizer": self.opt}

    def begin_epoch(self, run: Run, epoch: int, skip: int) -> None:
        train_mode(self.model, self.cfg.freeze)

    def step(self, run: Run, batch) -> dict:
        set_lr(self.opt, self.cfg.lr * step_factor(run.step, self.milestone_steps, self.cfg.gamma))
        x, y = self.to_xy(batch, run)
        return cross_entropy_step(run, self.model, [self.opt], x, y)

    @staticmethod
    def to_xy(batch: tuple, run: Run) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        return prepare(images, run.device), labels.to(run.device, non_blocking=True)

    def end_epoch(self, run: Run, epoch: int, complete: bool) -> dict:
        loaders = [ld for ld in (self.loader, self.eval_loader) if ld is not None]
        return {"bad_images_skipped": sum(ld.data.skipped.value for ld in loaders)} if self.cfg.skip_bad_images else {}

    def evaluate(self, run: Run) -> dict:
        """Top-1 accuracy and loss on the evaluation split (centre crops), all of it unless ``--eval-batches``."""
        if self.eval_loader is None:
            return {}
        batches = self.eval_loader.epoch(0)
        if self.cfg.eval_batches:
            batches = itertools.islice(batches, self.cfg.eval_batches)
        return score(run, self.model, batches, lambda b: self.to_xy(b, run), acc_key="top1")


def main(cfg: Config) -> dict:
    """Train (or fine-tune) a supervised classifier as configured; returns the last epoch's statistics."""
    return fit(Supervised(cfg))


cli = command(Config, lambda cfg: echo_stats(main(cfg)),
              "Train the supervised baseline, or fine-tune a checkpoint, on labelled images.")

if __name__ == "__main__":
    cli()
