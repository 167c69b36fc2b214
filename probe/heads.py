"""The probes themselves: per-layer pooling, a non-affine BatchNorm and a linear classifier; the schedule.

Pooling (paper §4.1 vs the released ``yukimasano/linear-probes``):

* ``paper``: adaptive max-pool to a side s with C·s² close to 9600 (AlexNet: 10, 6, 5, 5, 6 for
  conv1..5 -> 9600/9216/9600/9600/9216 dimensions, exactly the paper's numbers);
* ``released``: the released fixed MaxPool2d per layer (AlexNet only; equal to ``paper`` on 224 inputs);
* ``none``: flatten the whole activation (CIFAR, where the paper does not reduce dimensionality).
"""
from __future__ import annotations

import math

import torch
from torch import nn

POOLINGS = ("paper", "released", "none")
TARGET_DIMS = 9600
# (kernel, stride, padding) of the released code's MaxPool2d per AlexNet layer.
RELEASED_POOLS = {"conv1": (6, 6, 3), "conv2": (4, 4, 0), "conv3": (3, 3, 1), "conv4": (3, 3, 1),
                  "conv5": (2, 2, 0)}

SCHEDULES = {
    # name: (base milestones for 36 epochs, divisor)
    "paper": ((5, 15, 25), 5.0),       # §4.1: 0.01, divided by five at epochs 5, 15, 25
    "released": ((10, 20, 30), 10.0),  # yukimasano/linear-probes: divided by ten at 10, 20, 30
}
BASE_EPOCHS = 36


def pool_side(channels: int) -> int:
    """Side of the adaptive max-pool giving about 9600 dimensions (AlexNet: 96->10, 256->6, 384->5)."""
    return max(1, round(math.sqrt(TARGET_DIMS / channels)))


def make_pool(pooling: str, layer: str, channels: int, arch: str) -> nn.Module:
    """The pooling in front of one layer's probe."""
    if pooling == "none":
        return nn.Identity()
    if pooling == "paper":
        return nn.AdaptiveMaxPool2d(pool_side(channels))
    if pooling == "released":
        if arch != "alexnet" or layer not in RELEASED_POOLS:
            raise ValueError(f"--pooling released is defined for AlexNet conv1..conv5 only, not {arch} {layer}; "
                             f"use --pooling paper")
        k, s, p = RELEASED_POOLS[layer]
        return nn.MaxPool2d(k, s, p)
    raise ValueError(f"unknown pooling {pooling!r}: use one of {POOLINGS}")


class LayerProbe(nn.Module):
    """pool -> flatten -> BatchNorm1d(affine=False) -> Linear: one layer's linear classifier.

    The BN has no learned scale or shift, so the classifier stays linear in the (standardised) features;
    it only fixes the wildly different feature scales of different layers and methods (released code).
    """

    def __init__(self, pool: nn.Module, dim: int, num_classes: int, bn: bool = True):
        super().__init__()
        self.pool = pool
        self.bn = nn.BatchNorm1d(dim, affine=False) if bn else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(torch.flatten(self.pool(x), 1).float()))


def probe_dims(shapes: dict[str, tuple[int, ...]], pooling: str, arch: str) -> dict[str, int]:
    """Flattened probe input size per layer, from the activation shapes ``C x H x W``."""
    dims = {}
    for name, shape in shapes.items():
        pool = make_pool(pooling, name, shape[0], arch)
        with torch.no_grad():
            dims[name] = pool(torch.zeros(1, *shape)).numel()
    return dims


def build_probes(shapes: dict[str, tuple[int, ...]], pooling: str, arch: str, num_classes: int,
                 bn: bool = True) -> nn.ModuleDict:
    """One ``LayerProbe`` per layer (an ``nn.ModuleDict`` keyed by layer name)."""
    dims = probe_dims(shapes, pooling, arch)
    return nn.ModuleDict({n: LayerProbe(make_pool(pooling, n, shapes[n][0], arch), dims[n], num_classes, bn)
                          for n in shapes})


def milestones(schedule: str, epochs: int) -> list[int]:
    """Epochs at which the lr drops, scaled from the 36-epoch schedule: round(m·E/36), at least 1."""
    base, _ = SCHEDULES[schedule]
    return [max(1, round(m * epochs / BASE_EPOCHS)) for m in base]


def lr_at(epoch: int, schedule: str, epochs: int, base_lr: float = 0.01) -> float:
    """Learning rate during 0-based ``epoch``: divided once for every milestone already reached."""
    _, divisor = SCHEDULES[schedule]
    drops = sum(1 for m in milestones(schedule, epochs) if epoch >= m)
    return base_lr / divisor ** drops


def ten_crop_average(logits: torch.Tensor, how: str = "softmax") -> torch.Tensor:
    """``N x crops x K`` logits -> ``N x K`` scores: mean of softmax outputs (DeepCluster, the paper's
    cited protocol) or mean of raw logits (the released linear-probes code)."""
    if how == "softmax":
        return logits.float().softmax(-1).mean(1)
    if how == "logits":
        return logits.float().mean(1)
    raise ValueError(f"unknown ten-crop average {how!r}: use softmax or logits")
