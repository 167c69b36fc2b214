"""Pieces the classification-style trainers share (RotNet, supervised): model choice, optimiser,
running means, the epoch loop with exact resume, and running a config from a click command.

Kept apart from ``engine.py`` so that the engine stays method-agnostic: nothing here is needed by a
trainer whose step is not "one optimiser, one cross-entropy" (BiGAN, MonoGAN write their own loop).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import click
import torch
import torch.nn.functional as F
from torch import nn

from train.engine import CommonConfig, Run, ResumeState, all_reduce_mean, unwrap
from train.models import AlexNetClassifier, EncoderSpec, SmallClassifier

ARCH_CHOICES = ("alexnet", "small")
# Input side each architecture is built for when no crop/size is given: AlexNet's 224 and the
# small encoder's CIFAR-sized 32.
DEFAULT_INPUT = {"alexnet": 224, "small": 32}


def build_classifier(spec: EncoderSpec, num_classes: int, input_size: int) -> nn.Module:
    """AlexNet-BN + fc6/fc7 + top (``alexnet``) or the small encoder + one linear layer (``small``)."""
    if spec.arch == "alexnet":
        if input_size < 63:
            raise click.ClickException(f"AlexNet needs inputs of at least 63 pixels (three 3/2 max-pools); "
                                       f"got {input_size}: raise --crop/--size or use --arch small")
        return AlexNetClassifier(spec, num_classes, input_size=input_size)
    return SmallClassifier(spec, num_classes, input_size=input_size)


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float, nesterov: bool = False):
    """SGD over the parameters that train (frozen ones are left out, so weight decay never moves them)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


@dataclass
class Meter:
    """Sample-weighted running means of named statistics."""

    sums: dict[str, float] = field(default_factory=dict)
    n: int = 0

    def add(self, count: int, **values: float) -> None:
        self.n += count
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * count

    def means(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}


# A trainer's map from one loader batch to (inputs, targets) on the run's device.
ToXY = Callable[[tuple], tuple[torch.Tensor, torch.Tensor]]


def fit_epoch(run: Run, model: nn.Module, batches, opt: torch.optim.Optimizer, to_xy: ToXY, desc: str,
              skip: int) -> dict:
    """Cross-entropy steps over ``batches`` (which start at batch ``skip``) until they end or the run is done.

    Returns the sample-weighted mean loss and accuracy and ``batches_done`` counted from the epoch's start.
    """
    meter, done = Meter(), skip
    for batch in run.progress(batches, len(batches), desc):
        x, y = to_xy(batch)
        with run.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        run.check_finite(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = (logits.argmax(1) == y).float().mean().item()
        meter.add(len(y), loss=loss.item(), acc=acc)
        done += 1
        stop = run.tick()  # the budget check is a collective under DDP: ask once per step
        if stop or run.step % run.cfg.log_every == 0:
            run.log({"event": "train", "loss": loss.item(), "acc": acc, "lr": opt.param_groups[0]["lr"]})
        if stop:
            break
    return {**meter.means(), "batches_done": done}


def score(run: Run, model: nn.Module, batches: Iterable, to_xy: ToXY, acc_key: str = "acc") -> dict:
    """Mean loss and accuracy (as ``acc_key``) of the model in eval mode over ``batches``, averaged over ranks."""
    net = unwrap(model).eval()
    meter = Meter()
    with torch.inference_mode():
        for batch in batches:
            x, y = to_xy(batch)
            with run.autocast():
                logits = net(x).float()
            meter.add(len(y), loss=F.cross_entropy(logits, y).item(),
                      **{acc_key: (logits.argmax(1) == y).float().mean().item()})
    return {k: all_reduce_mean(v, run.dist, run.device) for k, v in meter.means().items()}


def run_epochs(run: Run, cfg: CommonConfig, objects: dict[str, Any], encoder: nn.Module,
               scheduler: torch.optim.lr_scheduler.LRScheduler, state: ResumeState, batches_per_epoch: int,
               train_epoch: Callable[[int, int], dict], evaluate: Callable[[], dict]) -> dict:
    """The epoch loop every classification trainer shares.

    ``train_epoch(epoch, skip)`` trains from batch ``skip`` of ``epoch`` and returns its stats with
    ``batches_done`` (counted from the start of the epoch). A checkpoint follows every epoch and a
    ``--max-steps`` stop; a stop mid-epoch records how far it got, so ``--resume`` skips exactly the
    batches already trained on (the loader's order is a function of seed and epoch).
    """
    skip, stats = int(state.extra.get("batches_done", 0)), {}
    for epoch in range(state.epoch, cfg.epochs):
        if run.done:
            break
        run.epoch = epoch
        stats = train_epoch(epoch, skip)
        complete = stats["batches_done"] >= batches_per_epoch
        if complete:
            scheduler.step()
            stats |= {f"eval_{k}": v for k, v in evaluate().items()}
        run.log({"event": "epoch", "complete": complete, "lr": scheduler.get_last_lr()[0], **stats})
        run.save(objects, encoder, epoch + int(complete),
                 extra={"batches_done": 0 if complete else stats["batches_done"]})
        skip = 0
    run.close()
    return stats


def cli_run(main: Callable[[Any], dict], cfg: Any) -> None:
    """Run a trainer's ``main`` from its click command and print the final stats on one line."""
    stats = main(cfg)
    click.echo(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()),
               err=True)
