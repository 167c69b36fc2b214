"""Encoders shared by every trainer and read by the probes.

Two backbones, each built from a small config table:

* ``alexnet``: AlexNet with BatchNorm as in the paper (96/256/384/384/256), conv1..conv5.
* ``small``: the four-conv encoder of the paper's section 4.2 (kernels 7, 5, 3, 3; strides 3, 2, 2, 1),
  the MonoGAN critic's body, conv1..conv4.

An encoder is fully described by ``EncoderSpec`` (arch + keyword arguments); checkpoints store the
spec beside the weights, so ``probe`` rebuilds any trainer's encoder without knowing the trainer.
``features()`` returns the activation after each block's nonlinearity (before pooling): the probes'
entry points.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

# (name, out_channels, kernel, stride, padding, max-pool after)
ALEXNET = [
    ("conv1", 96, 11, 4, 2, True),    # N x 96 x 55 x 55  -> pool -> 27 x 27   (224 input)
    ("conv2", 256, 5, 1, 2, True),    # N x 256 x 27 x 27 -> pool -> 13 x 13
    ("conv3", 384, 3, 1, 1, False),   # N x 384 x 13 x 13
    ("conv4", 384, 3, 1, 1, False),   # N x 384 x 13 x 13
    ("conv5", 256, 3, 1, 1, True),    # N x 256 x 13 x 13 -> pool -> 6 x 6 (= 9216 flattened)
]
# The paper gives kernels and strides only; widths follow AlexNet's, padding keeps 32 -> 11 -> 6 -> 3 -> 3.
SMALL = [
    ("conv1", 96, 7, 3, 3, False),    # N x 96 x 11 x 11   (32 input)
    ("conv2", 256, 5, 2, 2, False),   # N x 256 x 6 x 6
    ("conv3", 384, 3, 2, 1, False),   # N x 384 x 3 x 3
    ("conv4", 256, 3, 1, 1, False),   # N x 256 x 3 x 3    (= 2304 flattened)
]
ARCHS = {"alexnet": ALEXNET, "small": SMALL}
# Residual archs of the Augmented Image Prior (ICLR 2023): (depth, width factor) of a wide ResNet for 32-px
# inputs (Zagoruyko & Komodakis), and torchvision's ResNets at 224. Blocks: conv1, then one per stage.
WIDE = {"wrn16_4": (16, 4), "wrn40_4": (40, 4)}
# WRN-d-k: conv1 N x 16 x 32 x 32; group1 N x 16k x 32 x 32; group2 N x 32k x 16 x 16; group3 N x 64k x 8 x 8
TORCHVISION_RESNETS = ("resnet18", "resnet50")
# ResNet-18 (50) at 224: conv1 (+ max-pool) N x 64 x 56 x 56; layer1 N x 64 (256) x 56 x 56; layer2
# N x 128 (512) x 28 x 28; layer3 N x 256 (1024) x 14 x 14; layer4 N x 512 (2048) x 7 x 7
RESIDUAL = (*WIDE, *TORCHVISION_RESNETS)
NORMS = ("bn", "none", "layer")


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild an encoder: saved in every checkpoint as ``encoder_spec``."""

    arch: str = "alexnet"
    norm: str = "bn"          # "bn": BatchNorm (paper); "none"/"layer": for a WGAN-GP critic
    act: str = "relu"         # "relu" or "leaky" (BiGAN: leaky ReLU, slope 0.2)
    sobel: bool = False       # DeepCluster's fixed Sobel front end (grey -> two gradient channels)
    in_channels: int = 3
    frontend: str = "conv"    # "scattering": conv1-2 replaced by a fixed scattering + 1x1 adapter (Table 4)
    frontend_size: int = 0    # the input side the scattering frontend is built for
    adapter: bool = False     # a learned 1x1 conv + BN + ReLU before conv3: the scattering frontend's adapter
                              # on a conv encoder (Table 4's control of what that adapter adds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderSpec":
        return cls(**d)


class Sobel(nn.Module):
    """Fixed greyscale + Sobel x/y filters, as DeepCluster's released code puts in front of conv1."""

    def __init__(self):
        super().__init__()
        grey = torch.full((1, 3, 1, 1), 1.0 / 3.0)
        sob = torch.tensor([[[1, 0, -1], [2, 0, -2], [1, 0, -1]]], dtype=torch.float32)
        weight = torch.stack([sob, sob.transpose(1, 2)])  # 2 x 1 x 3 x 3
        self.register_buffer("grey", grey)
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = nn.functional.conv2d(x, self.grey)                   # N x 1 x H x W
        return nn.functional.conv2d(g, self.weight, padding=1)   # N x 2 x H x W


def _act(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky":
        return nn.LeakyReLU(0.2, inplace=True)
    raise ValueError(f"unknown activation {kind!r}: use relu or leaky")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    if kind == "layer":
        # Per-sample normalisation (GroupNorm with one group): keeps a WGAN-GP penalty per sample.
        return nn.GroupNorm(1, channels)
    raise ValueError(f"unknown norm {kind!r}: use one of {NORMS}")


class Encoder(nn.Module):
    """Conv blocks ``conv{i}`` = Sequential(conv, norm, act), with max-pools where the table says."""

    def __init__(self, spec: EncoderSpec = EncoderSpec()):
        super().__init__()
        if spec.arch not in ARCHS and spec.arch not in RESIDUAL:
            raise ValueError(f"unknown architecture {spec.arch!r}: use one of {sorted(ARCHS) + list(RESIDUAL)}")
        self.spec = spec
        if spec.arch in RESIDUAL:
            self.sobel, self.pools = None, nn.ModuleDict()
            self.blocks, self.out_channels = residual_blocks(spec.arch, spec.in_channels)
            return
        self.sobel = Sobel() if spec.sobel else None
        c_in = 2 if spec.sobel else spec.in_channels
        self.blocks = nn.ModuleDict()
        self.pools = nn.ModuleDict()
        for name, c_out, k, s, p, pool in ARCHS[spec.arch]:
            # A bias is redundant before BatchNorm but kept: BN folding then has a place to go.
            self.blocks[name] = nn.Sequential(nn.Conv2d(c_in, c_out, k, s, p), _norm(spec.norm, c_out),
                                              _act(spec.act))
            if pool:
                self.pools[name] = nn.MaxPool2d(3, 2)
            c_in = c_out
        self.out_channels = c_in
        if spec.adapter:
            self._adapter()
        self.reset_parameters()
        if spec.frontend == "scattering":
            self._scattering_frontend()

    def _adapter(self) -> None:
        """conv3 reads conv2's pooled output through a learned 1x1 convolution, as it reads the scattering
        frontend's: conv3's block becomes Sequential(adapter, conv3), trained with it."""
        c = self.blocks["conv2"][0].out_channels
        adapter = nn.Sequential(nn.Conv2d(c, c, 1), _norm(self.spec.norm, c), _act(self.spec.act))  # N x c x h x w
        self.blocks["conv3"] = nn.Sequential(adapter, self.blocks["conv3"])

    def _scattering_frontend(self) -> None:
        """conv1 becomes the scattering frontend (it yields conv2's pooled output), conv2 the identity."""
        from train.scattering import ScatteringFrontend

        self.blocks["conv1"] = ScatteringFrontend(self.spec.arch, self.spec.frontend_size,
                                                  in_channels=self.spec.in_channels)
        self.blocks["conv2"] = nn.Identity()
        for name in ("conv1", "conv2"):
            if name in self.pools:
                del self.pools[name]

    @property
    def layer_names(self) -> list[str]:
        return list(self.blocks.keys())

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _run(self, x: torch.Tensor, upto: str | None, collect: bool):
        feats = {}
        if self.sobel is not None:
            x = self.sobel(x)
        for name, block in self.blocks.items():
            x = block(x)
            if collect:
                feats[name] = x
            if name in self.pools:
                x = self.pools[name](x)
            if name == upto:
                break
        return x, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last block after its pool (alexnet: N x 256 x 6 x 6 on 224 inputs)."""
        return self._run(x, None, False)[0]

    def features(self, x: torch.Tensor, layers: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Activations after each block's nonlinearity, before pooling, for ``layers`` (default: all)."""
        layers = layers or self.layer_names
        unknown = [n for n in layers if n not in self.blocks]
        if unknown:
            raise KeyError(f"{self.spec.arch} has no layer {unknown[0]!r}; it has {self.layer_names}")
        last = max(layers, key=self.layer_names.index)
        _, feats = self._run(x, last, True)
        return {n: feats[n] for n in layers}


class WideBasic(nn.Module):
    """Pre-activation wide-ResNet block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, 1x1 shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if c_in == c_out and stride == 1 else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))
        y = self.conv2(torch.relu(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


def residual_blocks(arch: str, in_channels: int = 3) -> tuple[nn.ModuleDict, int]:
    """The named blocks of a residual arch and its output channels (WRN: last BN-ReLU closes group3)."""
    if arch in WIDE:
        depth, k = WIDE[arch]
        n, c = (depth - 4) // 6, 16
        blocks = nn.ModuleDict({"conv1": nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)})
        for g, (width, stride) in enumerate(((16 * k, 1), (32 * k, 2), (64 * k, 2)), 1):
            layers = [WideBasic(c if i == 0 else width, width, stride if i == 0 else 1) for i in range(n)]
            if g == 3:
                layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            blocks[f"group{g}"], c = nn.Sequential(*layers), width
        return blocks, c
    import torchvision

    net = torchvision.models.get_model(arch, weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    blocks = nn.ModuleDict({"conv1": nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)})
    for name in ("layer1", "layer2", "layer3", "layer4"):
        blocks[name] = getattr(net, name)
    return blocks, net.fc.in_features


def build_encoder(spec: EncoderSpec | dict[str, Any]) -> Encoder:
    """Encoder from a spec or its dict form (as stored in checkpoints)."""
    if isinstance(spec, dict):
        spec = EncoderSpec.from_dict(spec)
    return Encoder(spec)


def encoder_output_dim(spec: EncoderSpec, size: int) -> int:
    """Flattened size of ``Encoder(spec)(x)`` for a square input of side ``size``."""
    with torch.no_grad():
        enc = Encoder(spec).eval()
        return enc(torch.zeros(1, spec.in_channels, size, size)).numel()


class AlexNetClassifier(nn.Module):
    """AlexNet-BN encoder + the classic fc6/fc7 (+BN, ReLU, dropout) + a top layer of ``num_classes``.

    Used by RotNet (4 classes), DeepCluster (k pseudo-classes; ``top`` is reset every epoch) and the
    supervised baseline. ``embed()`` gives the 4096-d fc7 output DeepCluster clusters.
    """

    def __init__(self, spec: EncoderSpec, num_classes: int, input_size: int = 224, dropout: float = 0.5):
        super().__init__()
        self.encoder = Encoder(spec)
        d = encoder_output_dim(spec, input_size)  # 9216 for alexnet at 224
        self.mlp = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(d, 4096), nn.BatchNorm1d(4096), nn.ReLU(inplace=True),     # fc6
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.BatchNorm1d(4096), nn.ReLU(inplace=True),  # fc7
        )
        self.top = nn.Linear(4096, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.flatten(self.encoder(x), 1))          # N x 4096

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.embed(x))                               # N x num_classes

    def reset_top(self, num_classes: int | None = None) -> None:
        n = num_classes or self.top.out_features
        self.top = nn.Linear(4096, n).to(self.top.weight.device)
        nn.init.normal_(self.top.weight, 0, 0.01)
        nn.init.zeros_(self.top.bias)


class SmallClassifier(nn.Module):
    """The small encoder + one linear layer (the paper's section 4.2 head), for CIFAR-sized inputs."""

    def __init__(self, spec: EncoderSpec, num_classes: int, input_size: int = 32):
        super().__init__()
        self.encoder = Encoder(spec)
        self.top = nn.Linear(encoder_output_dim(spec, input_size), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(torch.flatten(self.encoder(x), 1))


class PooledClassifier(nn.Module):
    """A residual encoder + global average pooling + one linear layer (WRN, ResNet)."""

    def __init__(self, spec: EncoderSpec, num_classes: int):
        super().__init__()
        self.encoder = Encoder(spec)
        self.top = nn.Linear(self.encoder.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(torch.flatten(nn.functional.adaptive_avg_pool2d(self.encoder(x), 1), 1))
