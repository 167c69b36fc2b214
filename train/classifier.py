"""What the classification-style methods share (RotNet, supervised, DeepCluster): the networks, SGD over
the trainable parameters, one cross-entropy step, and scoring in eval mode."""
from __future__ import annotations

from typing import Callable, Iterable

import click
import torch
import torch.nn.functional as F
from torch import nn

from train.loop import Meter
from train.models import RESIDUAL, AlexNetClassifier, EncoderSpec, PooledClassifier, SmallClassifier
from train.run import Run, all_reduce_mean, unwrap

ARCH_CHOICES = ("alexnet", "small")
# Archs with a classifier for supervised training and distillation: the above and the residual ones.
CLASSIFIER_ARCHS = (*ARCH_CHOICES, *RESIDUAL)
# ImageFolder transforms family of each classifier arch (train.loader.folder.transforms_for): 224-px archs
# take AlexNet's ImageNet recipe, 32-px ones the CIFAR one.
TRANSFORMS = {"resnet18": "alexnet", "resnet50": "alexnet", "wrn16_4": "small", "wrn40_4": "small"}
# Input side each architecture is built for when no crop/size is given: AlexNet's 224 and the
# small encoder's CIFAR-sized 32.
DEFAULT_INPUT = {"alexnet": 224, "small": 32, "wrn16_4": 32, "wrn40_4": 32, "resnet18": 224, "resnet50": 224}

# Methods whose classifier head predicts the data's own labels (RotNet's predicts rotations, DeepCluster's
# its clusters: a head of the same width would load but answer another question).
LABEL_METHODS = ("supervised", "distill")


def check_label_classifier(ck: dict, what: str) -> None:
    """Refuse a checkpoint whose head was not trained on the data's labels (``what`` names the input)."""
    method = ck.get("method")
    if method not in LABEL_METHODS:
        raise click.ClickException(f"{what}: a {method!r} checkpoint, whose head predicts {method}'s own "
                                   f"targets, not the data's classes; give a train.supervised (or train.distill) "
                                   f"checkpoint")


# A method's map from one loader batch to (inputs, targets) on the run's device.
ToXY = Callable[[tuple], tuple[torch.Tensor, torch.Tensor]]


def build_classifier(spec: EncoderSpec, num_classes: int, input_size: int, dropout: float = 0.5) -> nn.Module:
    """AlexNet-BN + fc6/fc7 (``dropout`` before each) + top (``alexnet``) or the small encoder + one linear
    layer (``small``, which has no fc block) or a residual encoder + global pooling + one linear layer."""
    if spec.arch == "alexnet":
        if input_size < 63:
            raise click.ClickException(f"AlexNet needs inputs of at least 63 pixels (three 3/2 max-pools); "
                                       f"got {input_size}: raise --crop/--size or use --arch small")
        return AlexNetClassifier(spec, num_classes, input_size=input_size, dropout=dropout)
    if spec.arch in RESIDUAL:
        # global pooling takes any side the strides leave at least 1 pixel of
        least = 8 if spec.arch in RESIDUAL[:2] else 32
        if input_size < least:
            raise click.ClickException(f"{spec.arch} needs inputs of at least {least} pixels; got {input_size}: "
                                       f"raise --crop/--size or pick another arch")
        return PooledClassifier(spec, num_classes)
    return SmallClassifier(spec, num_classes, input_size=input_size)


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float, nesterov: bool = False):
    """SGD over the parameters that train (frozen ones are left out, so weight decay never moves them)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


def cross_entropy_step(run: Run, model: nn.Module, opts: list[torch.optim.Optimizer], x: torch.Tensor,
                       y: torch.Tensor) -> dict[str, torch.Tensor]:
    """One cross-entropy step; its loss and accuracy as tensors (the loop syncs once)."""
    with run.autocast():
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in opts:
        opt.step()
    return {"loss": loss.detach(), "acc": (logits.detach().argmax(1) == y).float().mean()}


def score(run: Run, model: nn.Module, batches: Iterable, to_xy: ToXY, acc_key: str = "acc") -> dict:
    """Mean loss and accuracy (as ``acc_key``) of the model in eval mode over ``batches``, averaged over ranks."""
    net = unwrap(model).eval()
    meter = Meter()
    with torch.inference_mode():
        for batch in batches:
            x, y = to_xy(batch)
            with run.autocast():
                logits = net(x).float()
            meter.add({"loss": F.cross_entropy(logits, y).item(),
                       acc_key: (logits.argmax(1) == y).float().mean().item()}, n=len(y))
    return {k: all_reduce_mean(v, run.dist, run.device) for k, v in meter.means().items()}
