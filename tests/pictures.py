"""Small checkpoints and images for the image-making probes' tests (probe.style, probe.visualize)."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch import nn

from train.config import CommonConfig
from train.run import write_bare_checkpoint
from train.models import Encoder, EncoderSpec


def encoder_checkpoint(folder, arch: str = "small", seed: int = 0, name: str = "ck.pt") -> str:
    """A seeded encoder with non-trivial BatchNorm statistics (so folding matters), as a checkpoint."""
    torch.manual_seed(seed)
    enc = Encoder(EncoderSpec(arch=arch))
    for m in enc.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    path = os.path.join(str(folder), name)
    write_bare_checkpoint(path, method=f"random-{seed}", cfg=CommonConfig(), encoder=enc)
    return path


def write_image(path, array: np.ndarray) -> str:
    """Save an ``H x W x 3`` float array in [0, 1] as an image file."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(str(path))
    return str(path)


def stripes(h: int, w: int, period: float, angle: float, colour=(1.0, 0.5, 0.2)) -> np.ndarray:
    """Coloured sinusoidal stripes: a texture with a clear style."""
    yy, xx = np.mgrid[0:h, 0:w]
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    return wave[..., None] * np.array(colour)[None, None]


def blobs(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour image: content with large shapes."""
    rng = np.random.default_rng(seed)
    small = rng.random((4, 4, 3))
    return np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)) / 255.0


def one_line_error(result) -> str:
    """The CLI failed cleanly: non-zero exit, no traceback, a single 'Error:' line."""
    assert result.exit_code != 0
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]
