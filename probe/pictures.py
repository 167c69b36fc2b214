"""What the image-making probes share (``probe.style``, ``probe.visualize``): reading images, tiling
figures, and writing a PNG with its configuration in a JSON file beside it, both atomically."""
from __future__ import annotations

import json
import os
from typing import Any

import click
import numpy as np
import torch
from PIL import Image

from augment.files import atomic_path, describe_os_error, file_digest, write_text_atomic
from probe.backbone import Backbone


MAX_PIXELS = 4096 * 4096     # the largest resized image a figure takes (the largest --size, square)


def read_image(path: str, option: str, size: int = 0) -> torch.Tensor:
    """An image file as ``1 x 3 x H x W`` in [0, 1], its shorter side resized to ``size`` (0: as it is).

    Anything unreadable is one line naming ``option`` and the file.
    """
    try:
        with open(path, "rb") as f, Image.open(f) as im:
            img = im.convert("RGB")
    except Image.UnidentifiedImageError:
        raise click.ClickException(f"{option} {path}: not an image PIL can read; pass a JPEG/PNG/... file") from None
    except FileNotFoundError:
        raise click.ClickException(f"{option} {path}: no such file; give an existing image file") from None
    except IsADirectoryError:
        raise click.ClickException(f"{option} {path}: is a folder; give an image file") from None
    except PermissionError:
        raise click.ClickException(f"{option} {path}: permission denied reading it; make the file readable "
                                   f"by this user or give another image") from None
    except OSError as e:
        raise click.ClickException(f"{option} {path}: cannot read the image ({describe_os_error(e, path)})") from None
    except (SyntaxError, ValueError) as e:
        raise click.ClickException(f"{option} {path}: corrupt or truncated image ({e}); replace the file") from None
    if size:
        scale = size / min(img.size)
        w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        # An extreme aspect ratio (20000 x 20) resized to a shorter side of --size would take more memory
        # than any machine has once the encoder's features are computed: refuse it before allocating.
        if w * h > MAX_PIXELS:
            raise click.ClickException(f"{option} {path}: {img.width} x {img.height} pixels resized to a shorter "
                                       f"side of {size} would be {w} x {h}, more than {MAX_PIXELS:,} pixels; "
                                       f"crop the image to a less elongated shape or lower --size")
        img = img.resize((w, h), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def to_encoder(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the encoders' (-1, 1) input range (``train.loader.prepare``'s)."""
    return x * 2.0 - 1.0


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """``1 x 3 x H x W`` (or ``3 x H x W``) in [0, 1] -> ``H x W x 3`` for imshow."""
    return x.detach().reshape(-1, *x.shape[-2:]).permute(1, 2, 0).clamp(0, 1).cpu().numpy()


def mosaic(images: list[np.ndarray], columns: int, pad: int = 2) -> np.ndarray:
    """Equal-sized ``H x W x 3`` images in a ``columns``-wide grid on a white ground (Fig. 5's 3 x 3)."""
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    grid = np.ones((rows * (h + pad) - pad, columns * (w + pad) - pad, 3), np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img
    return grid


def panel_figure(panels: list[tuple[str, np.ndarray]], out: str, title: str = "", dpi: int = 100) -> None:
    """One row of titled images, each drawn at about its own pixel size (at least 2 inches high), written
    to ``out`` (PNG) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = max(2.0, max(img.shape[0] for _, img in panels) / dpi)
    widths = [height * img.shape[1] / img.shape[0] for _, img in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 0.2 * len(panels), height + 0.6), dpi=dpi,
                             squeeze=False, gridspec_kw={"width_ratios": widths})
    for ax, (name, img) in zip(axes[0], panels):
        # small tiles (CIFAR-sized) are magnified without blurring
        ax.imshow(img, interpolation="nearest" if img.shape[0] < height * dpi else "antialiased")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with atomic_path(out, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    except OSError as e:
        raise click.ClickException(f"--out {out}: {describe_os_error(e, out)}") from None
    finally:
        plt.close(fig)


def config_path(out: str) -> str:
    """Where the JSON beside the PNG ``out`` goes: same name, ``.json``."""
    return os.path.splitext(out)[0] + ".json"


def write_config(out: str, record: dict[str, Any]) -> str:
    """Write ``record`` beside the PNG ``out``; returns the JSON's path."""
    path = config_path(out)
    try:
        write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise click.ClickException(f"--out {out}: {describe_os_error(e, path)}") from None
    return path


def describe_backbone(bb: Backbone) -> dict[str, Any]:
    """A checkpoint's identity for a figure's record."""
    return {"path": bb.path, "method": bb.method, "arch": bb.spec.get("arch"), "encoder_hash": bb.encoder_hash,
            "checkpoint_sha256": bb.checkpoint_sha256, "epoch": bb.epoch, "git": bb.git}


def describe_file(path: str) -> dict[str, Any]:
    """An input image's identity for a figure's record."""
    return {"path": os.path.abspath(path), "sha256": file_digest(path)}
