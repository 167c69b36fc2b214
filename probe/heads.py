"""The probes themselves: per-layer pooling, a non-affine BatchNorm and a linear classifier; the schedule.

Pooling (paper §4.1 vs the released ``yukimasano/linear-probes``):

* ``paper``: adaptive max-pool to a side s with C·s² close to 9600 (AlexNet: 10, 6, 5, 5, 6 for
  conv1..5 -> 9600/9216/9600/9600/9216 dimensions, exactly the paper's numbers);
* ``released``: the released fixed MaxPool2d per layer (AlexNet only; equal to ``paper`` on 224 inputs);
* ``none``: flatten the whole activation (CIFAR, where the paper does not reduce dimensionality).

Normalisation in front of the linear layer (``--probe-bn``; the paper's text names none, it says "a linear
classifier"; neither BN below has learned parameters, so the classifier stays linear in the features):

* ``feature``: BatchNorm1d(affine=False) on the flattened probe input, one statistic per feature;
* ``channel``: BatchNorm2d(C, affine=False) on the pooled map, one statistic per channel, as both
  released probe codes (``yukimasano/linear-probes`` ``eval_linear_probes.py``, RotNet's
  ``architectures/LinearClassifier.py``);
* ``none``: no normalisation.

Initialisation of the linear layer (``--linear-init``): ``default`` is torch's ``nn.Linear`` init;
``xavier`` is the released code's: its classifier is a ``Conv2d(C, K, kernel=h x w)`` over the pooled
map, xavier-uniform initialised (gain 1, bias 0), so the bound is sqrt(6 / ((C + K)·h·w)), not the
sqrt(6 / (C·h·w + K)) a Linear layer's own fans would give.
"""
from __future__ import annotations

import math

import torch
from torch import nn

POOLINGS = ("paper", "released", "none")
PROBE_BNS = ("feature", "channel", "none")
LINEAR_INITS = ("default", "xavier")
TEN_CROP_AVERAGES = ("softmax", "logits")
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
    """pool -> [BN] -> flatten -> Linear: one layer's linear classifier.

    ``shape`` is the pooled activation's ``C x h x w``; inputs may also arrive already flattened
    (cached CIFAR features), and are viewed back to it for the per-channel BN.
    """

    def __init__(self, pool: nn.Module, shape: tuple[int, ...], num_classes: int, bn: str = "feature",
                 init: str = "default"):
        super().__init__()
        if bn not in PROBE_BNS or init not in LINEAR_INITS:
            raise ValueError(f"probe bn {bn!r} / init {init!r}: use one of {PROBE_BNS} / {LINEAR_INITS}")
        self.pool, self.shape, self.dim, self.bn_kind = pool, tuple(shape), math.prod(shape), bn
        if bn == "feature":
            self.bn = nn.BatchNorm1d(self.dim, affine=False)
        elif bn == "channel":
            self.bn = nn.BatchNorm2d(self.shape[0], affine=False)
        else:
            self.bn = nn.Identity()
        self.fc = nn.Linear(self.dim, num_classes)
        if init == "xavier":
            self.reset_xavier()

    @torch.no_grad()
    def reset_xavier(self) -> None:
        """The released init: xavier-uniform of the equivalent ``K x C x h x w`` conv weight, zero bias."""
        weight = torch.empty(self.fc.out_features, *self.shape)
        nn.init.xavier_uniform_(weight, gain=1.0)
        self.fc.weight.copy_(weight.reshape(self.fc.out_features, -1))
        self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x).float()
        if self.bn_kind == "channel":
            return self.fc(torch.flatten(self.bn(x.reshape(len(x), *self.shape)), 1))
        return self.fc(self.bn(torch.flatten(x, 1)))


def pooled_shapes(shapes: dict[str, tuple[int, ...]], pooling: str, arch: str) -> dict[str, tuple[int, ...]]:
    """Pooled probe input ``C x h x w`` per layer, from the activation shapes ``C x H x W``."""
    out = {}
    for name, shape in shapes.items():
        pool = make_pool(pooling, name, shape[0], arch)
        with torch.no_grad():
            out[name] = tuple(pool(torch.zeros(1, *shape)).shape[1:])
    return out


def probe_dims(shapes: dict[str, tuple[int, ...]], pooling: str, arch: str) -> dict[str, int]:
    """Flattened probe input size per layer, from the activation shapes ``C x H x W``."""
    return {n: math.prod(s) for n, s in pooled_shapes(shapes, pooling, arch).items()}


def build_probes(shapes: dict[str, tuple[int, ...]], pooling: str, arch: str, num_classes: int,
                 bn: str = "feature", init: str = "default") -> nn.ModuleDict:
    """One ``LayerProbe`` per layer (an ``nn.ModuleDict`` keyed by layer name)."""
    pooled = pooled_shapes(shapes, pooling, arch)
    return nn.ModuleDict({n: LayerProbe(make_pool(pooling, n, shapes[n][0], arch), pooled[n], num_classes, bn, init)
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
