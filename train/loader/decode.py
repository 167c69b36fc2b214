"""Decode: JPEG/PNG bytes -> uint8 C x H x W tensors (one at a time on the CPU, or a batch at once on a GPU
with nvJPEG: ``decode_jpegs``); ``prepare`` scales a batch to (-1, 1) on a device."""
from __future__ import annotations

import io

import numpy as np
import torch
# Imported here, not on first decode: DataLoader workers are forked each epoch and would each pay
# the import (about a CPU second) again.
from torchvision.io import ImageReadMode, decode_image as tv_decode, decode_jpeg

PNG_MAGIC = b"\x89PNG"
JPEG_MAGIC = b"\xff\xd8"


def decode_image(data: bytes | bytearray, how: str = "torchvision") -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 RGB tensor C x H x W (its memory is H x W x C: a permuted view).

    ``torchvision`` (the default, faster than pillow-simd on JPEG: tests/bench/loader.py) decodes
    JPEG with ``decode_jpeg``; PNG goes through Pillow, because torchvision 0.29's libpng path crashes
    the process (segfault) on a damaged PNG instead of raising. A bytearray is decoded without a copy.
    """
    if how == "torchvision" and not data.startswith(PNG_MAGIC):
        buf = torch.frombuffer(data if isinstance(data, bytearray) else bytearray(data), dtype=torch.uint8)
        if data.startswith(JPEG_MAGIC):
            return decode_jpeg(buf, mode=ImageReadMode.RGB)
        return tv_decode(buf, mode=ImageReadMode.RGB)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def decode_jpegs(data: list, device: torch.device) -> list[torch.Tensor]:
    """A batch of JPEG payloads -> uint8 RGB C x H x W tensors on ``device``, decoded in one call (on CUDA:
    torchvision's batched nvJPEG). A payload that does not decode raises ``ValueError(index, message)``."""
    bufs = [torch.frombuffer(d if isinstance(d, bytearray) else bytearray(d), dtype=torch.uint8) for d in data]
    try:
        return decode_jpeg(bufs, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as batch_error:
        # The batched call names no sample: find the first payload that fails on its own.
        for i, buf in enumerate(bufs):
            try:
                decode_jpeg(buf, mode=ImageReadMode.RGB)
            except RuntimeError as e:
                raise ValueError(i, str(e)[:120]) from None
        raise ValueError(None, str(batch_error)[:120]) from None


def prepare(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 batch -> float on ``device`` in (-1, 1) (the paper's input range)."""
    x = images.to(device, non_blocking=True).float()
    return x.div_(127.5).sub_(1.0)

