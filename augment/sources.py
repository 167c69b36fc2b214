"""Source images: the paper's named images A/B/C, files and folders, decoded to 8-bit RGB.

Every mode PIL reads is accepted and converted the same documented way (docs/augmentation.md):
EXIF orientation applied first; alpha composited over white; 16-bit scaled to 8 bits; CMYK, palette,
greyscale and the rest through PIL's own conversion to RGB.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass

import click
import numpy as np
from PIL import Image, ImageOps

# The paper's images (ICLR 2020 naming; the later repository swaps A and B, see ../shared/data/README.md).
NAMED = {
    "A": ("ameyoko.jpg", "78c2681de2dbfb416fb861ca3ae0a5e21f3f53c56dfc18b276b0feab4ec526aa"),
    "B": ("animals.png", "8d53d41034236f3b7248134e1b9b48060ee0f6eed1eb779a1f0522e0bf05f533"),
    "C": ("sf.png", "a17d42cda71851ff48b6abf24f7eaf28eb021e05094805443de073c11696b7f6"),
}
URL = "https://github.com/yukimasano/single_img_pretraining/raw/master/images/{}"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")
# PIL's own hard limit (2x MAX_IMAGE_PIXELS): beyond this a file is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 2 * 89_478_485


@dataclass(frozen=True)
class Source:
    """One decoded source image: ``name`` is what samples record, ``rgb`` is H x W x 3 uint8."""

    name: str
    path: str
    sha256: str
    named: str | None
    mode: str
    rgb: np.ndarray

    def record(self) -> dict:
        h, w = self.rgb.shape[:2]
        rec = {"name": self.name, "sha256": self.sha256, "width": w, "height": h, "mode": self.mode}
        if self.named:
            rec["named"] = self.named
        return rec


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_dir() -> str:
    """User cache of downloaded named images (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "single-image-ssl", "images")


def download(url: str, dest: str) -> None:
    """Fetch ``url`` to ``dest`` (tests replace this function; they never touch the network)."""
    with urllib.request.urlopen(url, timeout=30) as r, open(dest, "wb") as f:
        f.write(r.read())


def _file_sha(path: str) -> str:
    with open(path, "rb") as f:
        return sha256_bytes(f.read())


def named_image(key: str) -> str:
    """Path of named image ``key``: ``$SOURCE_IMAGE_DIR``, then the user cache, then a checked download."""
    fname, sha = NAMED[key]
    env = os.environ.get("SOURCE_IMAGE_DIR")
    if env:
        path = os.path.join(env, fname)
        if os.path.isfile(path):
            if _file_sha(path) != sha:
                raise click.ClickException(f"{path}: sha256 differs from image {key}'s; replace it with the "
                                           f"authors' {fname} or point SOURCE_IMAGE_DIR elsewhere")
            return path
    cached = os.path.join(cache_dir(), fname)
    if os.path.isfile(cached) and _file_sha(cached) == sha:
        return cached
    tmp = cached + ".partial"
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        download(URL.format(fname), tmp)
        if _file_sha(tmp) != sha:
            raise OSError(f"downloaded {fname} has the wrong sha256")
        os.replace(tmp, cached)
    except OSError as e:  # URLError is an OSError; so are disk errors in the cache
        if os.path.exists(tmp):
            os.remove(tmp)
        raise click.ClickException(
            f"image {key} ({fname}) is not in SOURCE_IMAGE_DIR ({env or 'unset'}) nor in {cache_dir()}, and "
            f"the download failed ({e}); set SOURCE_IMAGE_DIR to a folder holding {fname}") from None
    return cached


def list_images(folder: str) -> list[str]:
    """Image files under ``folder``, recursively, in sorted (reproducible) order of relative path."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in files:
            if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."):
                found.append(os.path.join(root, f))
    return sorted(found, key=lambda p: os.path.relpath(p, folder))


def choose(paths: list[str], n: int, seed: int) -> list[int]:
    """Indices of the ``n`` sources drawn from ``paths``: a pure function of (listing, n, seed), sorted."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x50C])))
    return sorted(int(i) for i in rng.choice(len(paths), size=n, replace=False))


def resolve(image: str, n: int, seed: int) -> list[tuple[str, str, str | None]]:
    """``--image`` (A/B/C, file or folder) and ``--n`` -> [(name, path, named key)], checked."""
    if image in NAMED:
        if n != 1:
            raise click.ClickException(f"--image {image} is one image but --n is {n}; use --n 1 or a folder")
        return [(NAMED[image][0], named_image(image), image)]
    if os.path.isfile(image):
        if n != 1:
            raise click.ClickException(f"--image {image} is one file but --n is {n}; use --n 1 or a folder")
        return [(os.path.basename(image), image, None)]
    if os.path.isdir(image):
        paths = list_images(image)
        if not paths:
            raise click.ClickException(f"--image {image}: folder holds no images ({', '.join(IMAGE_EXTS[:4])}, ...)")
        if len(paths) < n:
            raise click.ClickException(f"--image {image}: folder holds {len(paths)} images, fewer than --n {n}; "
                                       f"lower --n or add images")
        return [(os.path.relpath(paths[i], image), paths[i], None) for i in choose(paths, n, seed)]
    if os.sep not in image and "." not in image and len(image) <= 3:
        raise click.ClickException(f"--image {image}: unknown named image (the paper's are A, B, C) and no such "
                                   f"file or folder")
    raise click.ClickException(f"--image {image}: no such file or folder; pass A, B, C, an image file or a folder")


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL image -> H x W x 3 uint8 RGB, the documented way for each mode."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def load(name: str, path: str, named: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Source:
    """Read, check and decode one source; every failure is one clear error naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise click.ClickException(f"{path}: cannot read ({e.strerror}); check the path and permissions") from None
    if not data:
        raise click.ClickException(f"{path}: empty file; pass a valid image")
    import io

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit below, so that the message names the option
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise click.ClickException(
                    f"{path}: {w}x{h} = {w * h:,} pixels exceeds --max-pixels {max_pixels:,} (decompression-bomb "
                    f"guard); raise --max-pixels if you trust this file")
            mode = im.mode
            rgb = to_rgb(im)
    except click.ClickException:
        raise
    except Image.UnidentifiedImageError:
        raise click.ClickException(f"{path}: not an image PIL can read; pass a JPEG/PNG/... file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise click.ClickException(f"{path}: corrupt or truncated image ({e}); replace the file") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise click.ClickException(f"{path}: image has no pixels; pass a valid image")
    return Source(name, path, sha256_bytes(data), named, mode, rgb)


def load_all(image: str, n: int, seed: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Source]:
    """Resolve ``--image``/``--n`` and decode every chosen source (fails before anything is written)."""
    return [load(name, path, named, max_pixels) for name, path, named in resolve(image, n, seed)]


def find_source(record: dict, search: str | None) -> str:
    """Locate a manifest source again (for re-rendering): named lookup, else by sha256 under ``search``."""
    if record.get("named"):
        return named_image(record["named"])
    if search:
        candidates = [search] if os.path.isfile(search) else list_images(search) if os.path.isdir(search) else []
        for p in candidates:
            if os.path.basename(p) == os.path.basename(record["name"]) and _file_sha(p) == record["sha256"]:
                return p
        for p in candidates:
            if _file_sha(p) == record["sha256"]:
                return p
    raise click.ClickException(f"source {record['name']} (sha256 {record['sha256'][:12]}...) not found; pass "
                               f"--sources FILE_OR_FOLDER holding it")
