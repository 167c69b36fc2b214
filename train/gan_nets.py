"""Networks and helpers of the two generative trainers (``train.bigan``, ``train.monogan``).

* ``UpGenerator``: DCGAN-style generator, z -> image in (-1, 1) by stride-2 transposed convolutions.
* ``Critic``: the MonoGAN (WGAN-GP) critic, the paper's small encoder (conv1..conv4) + one linear layer.
* ``BiGANEncoder``: AlexNet (leaky ReLU) conv1..conv5 + a fully connected head to the latent z.
* ``JointDiscriminator``: BiGAN's D(x, z); z enters every layer as a learned per-channel bias.
* ``gradient_penalty`` / ``penalty_terms``: WGAN-GP's penalty, one term per sample.
* ``save_grid`` / ``pair_grid``: PNG sample sheets written with PIL.
* ``fixed_noise`` / ``training_noise``: the latent codes of sample sheets and of training draws.

Choices and their sources are in docs/gans.md.
"""
from __future__ import annotations

import math
import os

import click
import numpy as np
import torch
from torch import nn

from augment.files import atomic_path, describe_os_error
from augment.seeds import mix
from train.models import Encoder, EncoderSpec, encoder_output_dim

CRITIC_NORMS = ("none", "layer")


# --------------------------------------------------------------------------- generators


class UpGenerator(nn.Module):
    """z -> Linear -> (8w or 4w) x b x b -> ``n_up`` x [ConvT(4, 2, 1), BN, ReLU] -> 3 x size x size, tanh.

    ``size`` must be ``b * 2**n_up`` with b >= 2 (MonoGAN: 32 = 4 * 2**3; BiGAN: 112 = 7 * 2**4).
    """

    def __init__(self, z_dim: int, size: int, width: int = 64, n_up: int = 3):
        super().__init__()
        base = size // 2 ** n_up
        if base < 2 or base * 2 ** n_up != size:
            raise ValueError(f"image size {size} is not a multiple of {2 ** n_up} (at least {2 ** (n_up + 1)})")
        self.z_dim, self.size, self.base = z_dim, size, base
        c = width * 2 ** (n_up - 1)
        self.fc = nn.Sequential(nn.Linear(z_dim, c * base * base), nn.BatchNorm1d(c * base * base),
                                nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.BatchNorm2d(c // 2), nn.ReLU(inplace=True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], -1, self.base, self.base)
        return self.net(h)


# --------------------------------------------------------------------------- MonoGAN critic


class Critic(nn.Module):
    """WGAN-GP critic: ``Encoder(small, norm, leaky)`` then one linear layer to a scalar score per sample."""

    def __init__(self, norm: str = "none", size: int = 32):
        super().__init__()
        # A per-sample penalty needs per-sample layers: BatchNorm would mix the samples of a batch.
        if norm not in CRITIC_NORMS:
            raise ValueError(f"critic norm {norm!r} mixes samples or is unknown; use one of {CRITIC_NORMS}")
        self.encoder = Encoder(EncoderSpec(arch="small", norm=norm, act="leaky"))
        self.fc = nn.Linear(encoder_output_dim(self.encoder.spec, size), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.encoder(x), 1)).squeeze(1)


def interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """Points on straight lines between real and fake samples, one uniform ``eps`` per sample."""
    if eps is None:
        eps = torch.rand(real.shape[0], device=real.device)
    eps = eps.to(real.dtype).view(-1, *([1] * (real.dim() - 1)))
    return (eps * real + (1 - eps) * fake).detach().requires_grad_(True)


def penalty_terms(scores: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """(||d score_i / d input_i|| - 1)^2 for each sample i, differentiable (``create_graph``).

    The gradient of the summed scores equals each sample's own gradient only when the critic treats
    samples independently, which is why the critic has no BatchNorm.
    """
    grads, = torch.autograd.grad(scores.sum(), inputs, create_graph=True)
    return (grads.float().flatten(1).norm(2, dim=1) - 1.0) ** 2


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP penalty terms (N,) at random interpolates of ``real`` and ``fake`` (Gulrajani et al.)."""
    x_hat = interpolate(real, fake, eps)
    return penalty_terms(critic(x_hat), x_hat)


# --------------------------------------------------------------------------- BiGAN


class BiGANEncoder(nn.Module):
    """AlexNet-BN with leaky ReLU (``.encoder``, what the probes read) + fc6/fc7-style head to z."""

    def __init__(self, z_dim: int = 200, size: int = 112, head_width: int = 4096):
        super().__init__()
        self.encoder = Encoder(EncoderSpec(arch="alexnet", norm="bn", act="leaky"))
        d = encoder_output_dim(self.encoder.spec, size)
        self.head = nn.Sequential(
            nn.Linear(d, head_width), nn.BatchNorm1d(head_width), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(head_width, head_width), nn.BatchNorm1d(head_width), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(head_width, z_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.encoder(x), 1))


class JointDiscriminator(nn.Module):
    """D(x, z): stride-2 convs on x; after each conv (and norm) a linear map of z adds a per-channel bias.

    The last layer scores the flattened x features plus a linear term in z, so z reaches every layer.
    """

    def __init__(self, z_dim: int = 200, size: int = 112, width: int = 64, n_down: int = 4):
        super().__init__()
        base = size // 2 ** n_down
        if base < 1 or base * 2 ** n_down != size:
            raise ValueError(f"image size {size} is not a multiple of {2 ** n_down}")
        self.convs, self.norms, self.zbias = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c_in = 3
        for i in range(n_down):
            c = width * 2 ** i
            self.convs.append(nn.Conv2d(c_in, c, 4, 2, 1))
            # DCGAN: no norm on the first layer; D always sees real and fake pairs in one batch.
            self.norms.append(nn.Identity() if i == 0 else nn.BatchNorm2d(c))
            self.zbias.append(nn.Linear(z_dim, c))
            c_in = c
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.fc_x = nn.Linear(c_in * base * base, 1)
        self.fc_z = nn.Linear(z_dim, 1, bias=False)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = x
        for conv, norm, zb in zip(self.convs, self.norms, self.zbias):
            h = self.act(norm(conv(h)) + zb(z)[:, :, None, None])
        return (self.fc_x(torch.flatten(h, 1)) + self.fc_z(z)).squeeze(1)


# --------------------------------------------------------------------------- sample sheets


def fixed_noise(n: int, z_dim: int, seed: int, kind: str) -> torch.Tensor:
    """The latent codes of every sample sheet of a run: a function of the seed only (same after resume)."""
    g = torch.Generator().manual_seed(mix(seed, 0x5EED))
    if kind == "uniform":
        return torch.rand(n, z_dim, generator=g) * 2 - 1
    return torch.randn(n, z_dim, generator=g)


def training_noise(device: torch.device, seed: int, rank: int) -> torch.Generator:
    """The generator of every training draw (z, interpolation weights), its state saved as
    ``extra.noise_rng``: kept apart from the global RNG, which each DataLoader iterator draws from,
    so that a mid-epoch resume continues the exact sequence."""
    return torch.Generator(device=device).manual_seed(mix(seed, rank, 0xA11CE))


def pair_grid(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Interleave two equally sized batches: x0, y0, x1, y1, ... (an image beside its reconstruction)."""
    return torch.stack([x, y], 1).flatten(0, 1)


def save_grid(images: torch.Tensor, path: str, nrow: int = 8, pad: int = 2) -> str:
    """Write an N x 3 x H x W batch in (-1, 1) as one PNG sheet, ``nrow`` images per row (atomic)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    sheet = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + k * (w + pad)
        sheet[y0:y0 + h, x0:x0 + w] = x[i].permute(1, 2, 0).numpy()
    from PIL import Image

    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_path(path, ".png") as tmp:
            Image.fromarray(sheet).save(tmp, format="PNG")
    except OSError as e:
        raise click.ClickException(f"sample sheet: {describe_os_error(e, path, need=sheet.nbytes)}; make "
                                   f"{os.path.dirname(path)} a folder this user can write and run again (with "
                                   f"--resume once a checkpoint.pt is there)") from None
    return path


class NoiseState:
    """Mixin for a method whose training draws come from ``self.noise``: its state goes through the
    checkpoint (``extra.noise_rng``), so a resumed run continues the exact sequence."""

    noise: torch.Generator

    def extra_state(self) -> dict:
        return {"noise_rng": self.noise.get_state()}

    def load_extra(self, extra: dict) -> None:
        if "noise_rng" in extra:
            self.noise.set_state(extra["noise_rng"])
