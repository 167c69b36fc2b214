"""`python -m probe.visualize maximize|retrieve`: what units of a layer respond to (the paper's Fig. 5).

* ``maximize``: activation maximisation as Lucid (Olah et al., 2018) renders it, the library the paper
  used: an image in a decorrelated Fourier parameterisation (1/f-scaled spectrum, ImageNet colour
  decorrelation, sigmoid), Lucid's ``standard_transforms`` (pad 12, jitter 8, scale 0.9-1.1, rotate
  -10..10 degrees, jitter 4) applied before every step, Adam at lr 0.05 for 512 steps, maximising the
  unit's mean response over all positions (Lucid's ``channel`` objective).
* ``retrieve``: the ``--top`` images of a folder with the largest spatial maximum of the unit's response.

The response is taken before the block's ReLU (equal to the ReLU's output where that is positive): a
unit silent on the starting image still gets a gradient, as with Lucid's ``*_pre_relu`` layers, and
ties at zero cannot decide a ranking. Each command writes one PNG (one panel per unit, in a row, as a
row of Fig. 5) and a JSON beside it with the configuration and the measured responses. Choices:
docs/figures.md.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import click
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from probe.backbone import Backbone, activations, load_backbone
from probe.data import IMAGE_EXTS
from probe.pictures import (describe_backbone, mosaic, panel_figure, read_image, to_encoder, to_numpy,
                            write_config)
from train.classifier import DEFAULT_INPUT
from train.run import resolve_device

# Lucid's colour decorrelation: square root of ImageNet's colour covariance (optvis/param/color.py)
COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_NORMALISED = COLOR_SQRT / COLOR_SQRT.norm(dim=0).max()
SCALES = [1 + (i - 5) / 50.0 for i in range(11)]         # Lucid's standard_transforms
ANGLES = list(range(-10, 11)) + 5 * [0]


@dataclass(frozen=True)
class MaximizeConfig:
    """Activation maximisation settings (Lucid's ``render_vis`` defaults)."""

    steps: int = 512
    size: int = 128
    lr: float = 0.05
    param: str = "fft"              # "fft" (Lucid's fft_image, decay power 1) or "pixel"
    decorrelate: bool = True
    transforms: bool = True
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RetrieveConfig:
    """Top-k retrieval settings."""

    top: int = 9
    size: int = 0                   # 0: the encoder's training input (224 alexnet, 32 small)
    batch_size: int = 64
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ImageParam(nn.Module):
    """``n`` images in [0, 1] from a learned spectrum (or pixels), as Lucid's ``param.image``."""

    def __init__(self, n: int, size: int, param: str, decorrelate: bool, generator: torch.Generator):
        super().__init__()
        self.size, self.param, self.decorrelate = size, param, decorrelate
        if param == "fft":
            fy, fx = torch.fft.fftfreq(size)[:, None], torch.fft.rfftfreq(size)[None]
            freqs = (fx * fx + fy * fy).sqrt()
            self.register_buffer("scale", 1.0 / freqs.clamp(min=1.0 / size))
            self.weights = nn.Parameter(torch.randn(n, 3, size, size // 2 + 1, 2, generator=generator) * 0.01)
        else:
            self.weights = nn.Parameter(torch.randn(n, 3, size, size, generator=generator) * 0.01)

    def forward(self) -> torch.Tensor:
        x = self.weights
        if self.param == "fft":
            spectrum = torch.view_as_complex(x) * self.scale
            x = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") / 4.0  # Lucid's constant 4
        if self.decorrelate:
            x = torch.einsum("nchw,dc->ndhw", x, COLOR_NORMALISED.to(x.device))
        return torch.sigmoid(x)


def _choice(options: list, g: torch.Generator):
    return options[int(torch.randint(len(options), (1,), generator=g))]


def jitter(x: torch.Tensor, d: int, g: torch.Generator) -> torch.Tensor:
    """A random crop ``d`` pixels smaller (Lucid's jitter)."""
    oy, ox = (int(v) for v in torch.randint(d + 1, (2,), generator=g))
    return x[..., oy:oy + x.shape[-2] - d, ox:ox + x.shape[-1] - d]


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotation about the centre, bilinear, zeros outside."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def standard_transforms(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Lucid's ``standard_transforms``: pad 12 (grey), jitter 8, random scale, random rotation, jitter 4."""
    x = jitter(F.pad(x, [12] * 4, value=0.5), 8, g)
    s = _choice(SCALES, g)
    x = F.interpolate(x, size=(int(s * x.shape[-2]), int(s * x.shape[-1])), mode="bilinear", align_corners=False)
    return jitter(rotate(x, _choice(ANGLES, g)), 4, g)


def unit_response(bb: Backbone, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The layer's response before its ReLU to images in [0, 1]: ``N x C x h x w``."""
    return activations(bb.encoder, to_encoder(x), [layer], pre_activation=True)[layer]


def check_size(bb: Backbone, layer: str, size: int, smallest: int) -> None:
    """Refuse a ``--size`` whose images (``smallest`` pixels after any transform) vanish before ``layer``."""
    device = next(bb.encoder.parameters()).device
    try:
        with torch.no_grad():
            unit_response(bb, torch.zeros(1, 3, smallest, smallest, device=device), layer)
    except RuntimeError as e:
        arch = bb.spec.get("arch", "alexnet")
        raise click.ClickException(f"--size {size}: too small for {layer} of this {arch} encoder (its pooling "
                                   f"leaves no pixel: {str(e).splitlines()[0][:120]}); raise --size (its "
                                   f"training input is {DEFAULT_INPUT.get(arch, 224)})") from None


def check_units(bb: Backbone, layer: str, units: list[int]) -> list[int]:
    """``units`` after checking each is a channel of ``layer``; one clear line otherwise."""
    n = bb.encoder.blocks[layer][0].out_channels
    bad = [u for u in units if not 0 <= u < n]
    if bad:
        raise click.ClickException(f"--units {bad[0]}: {layer} of {bb.path} has {n} units; use 0..{n - 1}")
    if not units:
        raise click.ClickException("--units: give at least one unit index, e.g. 0,1,2,3")
    return units


def own_means(response: torch.Tensor) -> torch.Tensor:
    """Image i's mean response of unit i (the images are rendered one per unit)."""
    idx = torch.arange(response.shape[0], device=response.device)
    return response[idx, idx].mean(dim=(-2, -1))


def maximize(bb: Backbone, layer: str, units: list[int], cfg: MaximizeConfig) -> tuple[torch.Tensor, dict]:
    """One image per unit maximising its mean response; returns them and the responses before and after."""
    g = torch.Generator().manual_seed(cfg.seed)
    # standard_transforms: pad 12 each side, jitter 8, the smallest scale, jitter 4
    check_size(bb, layer, cfg.size, int(min(SCALES) * (cfg.size + 16)) - 4 if cfg.transforms else cfg.size)
    device = next(bb.encoder.parameters()).device
    image = ImageParam(len(units), cfg.size, cfg.param, cfg.decorrelate, g).to(device)
    opt = torch.optim.Adam(image.parameters(), lr=cfg.lr)
    sel = torch.tensor(units, device=device)

    def measure() -> list[float]:
        with torch.no_grad():
            return own_means(unit_response(bb, image(), layer)[:, sel]).tolist()

    start = measure()
    for _ in range(cfg.steps):
        x = image()
        if cfg.transforms:
            x = standard_transforms(x, g)
        loss = -own_means(unit_response(bb, x, layer)[:, sel]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = measure()
    if not all(math.isfinite(v) for v in end):
        raise click.ClickException(f"{bb.path}: activation maximisation diverged; lower --lr")
    return image().detach(), {"start": dict(zip(map(str, units), start)), "end": dict(zip(map(str, units), end))}


def list_images(folder: str) -> list[str]:
    """Every image file under ``folder`` (recursively, sorted); a clear error when there is none."""
    if not os.path.isdir(folder):
        what = "a file, not a folder" if os.path.exists(folder) else "no such folder"
        raise click.ClickException(f"--data {folder}: {what}; give a folder of images to search (any layout)")
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names
                   if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise click.ClickException(f"--data {folder}: no images ({', '.join(IMAGE_EXTS)}) under it")
    return files


def load_square(path: str, size: int) -> torch.Tensor:
    """An image with its shorter side resized to ``size`` and centre-cropped to ``size x size``."""
    x = read_image(path, "--data", size)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def retrieve(bb: Backbone, files: list[str], layer: str, units: list[int],
             cfg: RetrieveConfig) -> tuple[int, np.ndarray, np.ndarray]:
    """(image side, per-unit top-``cfg.top`` file indices, their scores): by the unit's spatial maximum.

    Ties keep folder order (a stable sort), so the result is deterministic.
    """
    size = cfg.size or DEFAULT_INPUT[bb.spec.get("arch", "alexnet")]
    check_size(bb, layer, size, size)
    device = next(bb.encoder.parameters()).device
    sel = torch.tensor(units, device=device)
    scores = []
    for i in range(0, len(files), cfg.batch_size):
        batch = torch.cat([load_square(f, size) for f in files[i:i + cfg.batch_size]]).to(device)
        with torch.no_grad():
            scores.append(unit_response(bb, batch, layer)[:, sel].amax(dim=(-2, -1)).cpu())
    scores = torch.cat(scores).numpy()                                     # N x U
    top = np.stack([np.argsort(-scores[:, k], kind="stable")[:cfg.top] for k in range(len(units))])
    return size, top, np.take_along_axis(scores.T, top, axis=1)


def parse_units(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.ClickException(f"--units {value}: give comma-separated unit indices, e.g. 0,1,2,3") from None


def _open(checkpoint: str, layer: str, units: str, device: str) -> tuple[Backbone, list[int]]:
    bb = load_backbone(checkpoint, resolve_device(device))
    bb.check_layers([layer], "--layer")
    return bb, check_units(bb, layer, parse_units(units))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """What units of an encoder layer respond to: activation maximisation and top-k images (Fig. 5)."""


M, R = MaximizeConfig(), RetrieveConfig()


def common(f):
    for deco in reversed([
        click.option("--checkpoint", required=True, help="Checkpoint file or run folder."),
        click.option("--layer", required=True, help="Encoder layer, e.g. conv1..conv5."),
        click.option("--units", required=True, help="Comma-separated channel indices, e.g. 0,1,2,3."),
        click.option("--out", required=True, help="Figure (PNG); the configuration is written beside it as .json."),
        click.option("--device", default=M.device, show_default=True, help="auto, cpu, cuda or cuda:N."),
    ]):
        f = deco(f)
    return f


@cli.command("maximize")
@common
@click.option("--steps", type=click.IntRange(1, 100_000), default=M.steps, show_default=True)
@click.option("--size", type=click.IntRange(16, 1024), default=M.size, show_default=True, help="Image side.")
@click.option("--lr", type=click.FloatRange(0, None, min_open=True), default=M.lr, show_default=True,
              help="Adam learning rate.")
@click.option("--param", type=click.Choice(["fft", "pixel"]), default=M.param, show_default=True,
              help="Image parameterisation.")
@click.option("--decorrelate/--no-decorrelate", default=M.decorrelate, show_default=True)
@click.option("--transforms/--no-transforms", default=M.transforms, show_default=True,
              help="Lucid's standard transforms before every step.")
@click.option("--seed", type=int, default=M.seed, show_default=True)
def maximize_cmd(checkpoint, layer, units, out, device, steps, size, lr, param, decorrelate, transforms,
                 seed) -> None:
    """Images that maximise each unit's mean response (Lucid-style regularised optimisation)."""
    cfg = MaximizeConfig(steps=steps, size=size, lr=lr, param=param, decorrelate=decorrelate,
                         transforms=transforms, seed=seed, device=device)
    bb, unit_list = _open(checkpoint, layer, units, device)
    images, responses = maximize(bb, layer, unit_list, cfg)
    bb.assert_unchanged()
    panel_figure([(f"{layer}:{u}", to_numpy(img)) for u, img in zip(unit_list, images)], out,
                 title=f"{bb.method}: activation maximisation")
    record = {"figure": "activation maximisation (paper Fig. 5, left)", "config": cfg.to_dict(),
              "checkpoint": describe_backbone(bb), "layer": layer, "units": unit_list,
              "objective": "mean over positions of the unit's response before ReLU",
              "response": responses, "out": os.path.abspath(out)}
    click.echo(f"wrote {out} and {write_config(out, record)}", err=True)


@cli.command("retrieve")
@common
@click.option("--data", required=True, help="Image folder (searched recursively).")
@click.option("--top", type=click.IntRange(1, 100), default=R.top, show_default=True)
@click.option("--size", type=click.IntRange(0, 1024), default=R.size, show_default=True,
              help="Side images are resized and centre-cropped to; 0: 224 (alexnet) or 32 (small).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=R.batch_size, show_default=True)
def retrieve_cmd(checkpoint, layer, units, out, device, data, top, size, batch_size) -> None:
    """The --top images of --data with the largest spatial maximum of each unit's response."""
    cfg = RetrieveConfig(top=top, size=size, batch_size=batch_size, device=device)
    bb, unit_list = _open(checkpoint, layer, units, device)
    files = list_images(data)
    side, top_idx, top_scores = retrieve(bb, files, layer, unit_list, cfg)
    bb.assert_unchanged()
    columns = math.ceil(math.sqrt(cfg.top))
    panels = [(f"{layer}:{u}", mosaic([to_numpy(load_square(files[i], side)) for i in idx], columns))
              for u, idx in zip(unit_list, top_idx)]
    panel_figure(panels, out, title=f"{bb.method}: top {cfg.top} of {len(files)} images")
    record = {"figure": "top-k images per unit (paper Fig. 5, right)", "config": cfg.to_dict(),
              "checkpoint": describe_backbone(bb), "layer": layer, "units": unit_list, "image_side": side,
              "data": os.path.abspath(data), "images": len(files),
              "score": "spatial maximum of the unit's response before ReLU",
              "top": {str(u): [{"file": os.path.relpath(files[i], data), "score": float(s)}
                               for i, s in zip(idx, sc)] for u, idx, sc in zip(unit_list, top_idx, top_scores)},
              "out": os.path.abspath(out)}
    click.echo(f"wrote {out} and {write_config(out, record)}", err=True)


if __name__ == "__main__":
    cli()
