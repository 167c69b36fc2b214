"""Views: several independently augmented views of one sample (SimCLR's pair, DINO's multi-crop).

A ``ViewSpec`` is one view's recipe, in the order of the torchvision pipelines of SimCLR and DINO:
RandomResizedCrop -> horizontal flip -> colour jitter (probability ``jitter_p``, the four factors in a
random order) -> greyscale (``grey_p``) -> Gaussian blur (``blur_p``, sigma in [0.1, 2]) -> solarize
(``solarize_p``). Every draw comes from the per-sample generator the loader seeds by the sample's
position, so views are reproducible and resume is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as F

from train.loader.transform import resized_crop_box


@dataclass(frozen=True)
class ViewSpec:
    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)   # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grey_p: float = 0.2
    blur_p: float = 0.5
    solarize_p: float = 0.0
    interpolation: str = "bilinear"     # of the resized crop: "bilinear" or "bicubic"


def _u(g: torch.Generator) -> float:
    return torch.rand(1, generator=g).item()


def _jitter(img: torch.Tensor, s: ViewSpec, g: torch.Generator) -> torch.Tensor:
    b, c, sat, hue = s.jitter
    steps = [(F.adjust_brightness, b, False), (F.adjust_contrast, c, False), (F.adjust_saturation, sat, False),
             (F.adjust_hue, hue, True)]
    for i in torch.randperm(4, generator=g).tolist():
        fn, strength, is_hue = steps[i]
        if strength > 0:
            lo, hi = (-strength, strength) if is_hue else (max(0.0, 1 - strength), 1 + strength)
            img = fn(img, lo + (hi - lo) * _u(g))
    return img


def view(img: torch.Tensor, s: ViewSpec, g: torch.Generator) -> torch.Tensor:
    """One augmented view (uint8 3 x size x size) of a uint8 C x H x W image."""
    y, x, h, w = resized_crop_box(img.shape[1], img.shape[2], g, s.scale)
    mode = F.InterpolationMode.BICUBIC if s.interpolation == "bicubic" else F.InterpolationMode.BILINEAR
    out = F.resized_crop(img, y, x, h, w, [s.size, s.size], interpolation=mode, antialias=True)
    if _u(g) < 0.5:
        out = out.flip(-1)
    if _u(g) < s.jitter_p:
        out = _jitter(out, s, g)
    if _u(g) < s.grey_p:
        out = F.rgb_to_grayscale(out, num_output_channels=3)
    if _u(g) < s.blur_p:
        k = max(3, int(0.1 * s.size) // 2 * 2 + 1)       # SimCLR: a kernel of 10% of the side, odd
        sigma = 0.1 + 1.9 * _u(g)
        out = F.gaussian_blur(out, [k, k], [sigma, sigma])
    if _u(g) < s.solarize_p:
        out = F.solarize(out, 128)
    return out.contiguous()


class SingleView:
    """A loader transform returning one view: ``(img, generator) -> tensor`` (a class: workers pickle it)."""

    def __init__(self, spec: ViewSpec):
        self.spec = spec

    def __call__(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return view(img, self.spec, g)


class MultiView:
    """A loader transform returning one view per spec: ``(img, generator) -> tuple of tensors``."""

    def __init__(self, specs: tuple[ViewSpec, ...]):
        self.specs = specs

    def __call__(self, img: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        return tuple(view(img, s, g) for s in self.specs)
