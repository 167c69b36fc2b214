"""Transform: the methods' native augmentations on decoded uint8 C x H x W tensors.

``CropFlip`` (RotNet, BiGAN, centre crops) is drawn a batch at a time and writes straight into the
batch; every other transform is a function ``(image, generator) -> tensor or tuple of views`` called
per sample with a generator seeded by the sample's position in the slot's stream, so resume is exact.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
# Imported here, once, not lazily in each DataLoader worker: forked workers inherit it.
from torchvision.transforms.v2 import functional as F

# A native augmentation: (uint8 C x H x W tensor, generator) -> uint8 tensor(s) of the method's input size.
Transform = Callable[[torch.Tensor, torch.Generator], "torch.Tensor | tuple[torch.Tensor, ...]"]


def sample_seed(slot_seed: int, pos: int) -> int:
    """Seed of one sample's augmentation: cheap (called per sample), distinct per position."""
    return (slot_seed ^ (pos * 0x9E3779B97F4A7C15)) & 0x7FFFFFFFFFFFFFFF


def copy_chw(src: torch.Tensor, out: torch.Tensor, flip: bool = False) -> None:
    """``out[:] = src``, mirrored left-right if ``flip``. Decoders return C x H x W views of H x W x C
    memory; OpenCV's split de-interleaves such a view ~10x faster than torch's strided copy."""
    if src.shape != out.shape:
        raise ValueError(f"image of shape {tuple(src.shape)} in a batch of {tuple(out.shape)} images")
    if (src.dtype == torch.uint8 and src.shape[0] == 3 and src.stride(0) == 1 and src.stride(2) == 3
            and out.is_contiguous()):
        planes = list(out.numpy())
        got = cv2.split(src.permute(1, 2, 0).numpy(), planes)
        if got[0] is not planes[0]:                  # OpenCV allocated new planes: copy them over
            np.copyto(out.numpy(), np.stack(got))
        if flip:
            for p in planes:
                cv2.flip(p, 1, p)
        return
    out.copy_(src.flip(-1) if flip else src)


class CropFlip:
    """A random (or centred) ``size`` crop with an optional horizontal flip.

    Called as a Transform ``(img, generator) -> tensor`` it draws from the generator; the loader instead
    draws a whole batch's offsets at once (``draw``) and crops each sample straight into its batch
    slot (``into``), saving a generator and two copies per sample.
    """

    def __init__(self, size: int, at_random: bool = True, flip: bool = True):
        self.size, self.at_random, self.flip = size, at_random, flip

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``(n, 3)`` uniforms in [0, 1): vertical offset, horizontal offset and flip of n samples."""
        return rng.random((n, 3)) if self.at_random else np.ones((n, 3))

    def into(self, img: torch.Tensor, u: Sequence[float], out: torch.Tensor) -> None:
        """Write the crop of ``img`` (C x H x W) chosen by ``u`` (a row of ``draw``) into ``out``."""
        _, h, w = img.shape
        s = self.size
        if h < s or w < s:
            raise ValueError(f"patch {h}x{w} is smaller than the {s} crop")
        if self.at_random:
            y, x = int(u[0] * (h - s + 1)), int(u[1] * (w - s + 1))
        else:
            y, x = (h - s) // 2, (w - s) // 2
        copy_chw(img[:, y:y + s, x:x + s], out, flip=self.flip and u[2] < 0.5)

    def __call__(self, img: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(3, generator=g).tolist() if self.at_random else [1.0] * 3
        out = torch.empty((img.shape[0], self.size, self.size), dtype=img.dtype)
        self.into(img, u, out)
        return out



def random_crop_flip(size: int, flip: bool = True) -> CropFlip:
    """RotNet / BiGAN native augmentation: a non-scaled random ``size`` crop and a horizontal flip."""
    return CropFlip(size, at_random=True, flip=flip)




def resized_crop_box(h: int, w: int, g: torch.Generator, scale: tuple[float, float],
                     ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box ``(y, x, height, width)``: 10 tries, then the whole image."""
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    area = h * w
    for _ in range(10):
        a = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=g).item())
        r = math.exp(log_r[0] + (log_r[1] - log_r[0]) * torch.rand(1, generator=g).item())
        cw, ch = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
        if 0 < cw <= w and 0 < ch <= h:
            y = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            x = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            return y, x, ch, cw
    return 0, 0, h, w  # torchvision's fallback (the aspect bounds always admit a square patch)


def random_resized_crop_flip(size: int, scale: tuple[float, float] = (0.08, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Transform:
    """DeepCluster native augmentation: RandomResizedCrop(size, scale, ratio) + horizontal flip."""

    def t(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        y, x, ch, cw = resized_crop_box(img.shape[1], img.shape[2], g, scale, ratio)
        out = F.resized_crop(img, y, x, ch, cw, [size, size], antialias=True)
        if torch.rand(1, generator=g).item() < 0.5:
            out = out.flip(-1)
        return out.contiguous()

    return t


def center_crop(size: int) -> CropFlip:
    """Deterministic centre crop (DeepCluster's feature pass, evaluation); the generator is unused."""
    return CropFlip(size, at_random=False, flip=False)


def resize_center_crop(crop: int) -> Transform:
    """Resize the short side to crop * 256 / 224 (256 for 224), then centre-crop ``crop`` (DeepCluster's
    feature pass, ImageNet-style evaluation)."""
    side, cc = round(crop * 256 / 224), center_crop(crop)

    def t(img: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        if min(img.shape[-2:]) != side:
            img = F.resize(img, [side], antialias=True)
        return cc(img, None)

    return t
