"""Source images: the paper's named images A/B/C, files and folders, decoded to 8-bit RGB.

Every mode PIL reads is accepted and converted the same documented way (docs/augmentation.md):
EXIF orientation applied first; alpha composited over white; 16-bit scaled to 8 bits; CMYK, palette,
greyscale and the rest through PIL's own conversion to RGB.
"""
from __future__ import annotations

import os
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, replace

import click
import numpy as np
from PIL import Image, ImageOps

from augment.files import atomic_path, bytes_digest, file_digest, user_cache_dir
from augment.geometry import Pyramid

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
# Pyramids each render process keeps (MiB). With its interpreter and one shard's patches a worker then
# stays below 1 GiB whatever N is (docs/benchmarks.md).
SOURCE_CACHE_MIB = 512


@dataclass(frozen=True)
class Source:
    """One decoded source image: ``name`` is what samples record, ``rgb`` is H x W x 3 uint8.

    ``rgb`` is None for a source that was decoded, checked and recorded but whose pixels were not kept
    (``load_all`` with a budget); ``width`` and ``height`` are filled from ``rgb`` when it is given.
    """

    name: str
    path: str
    sha256: str
    named: str | None
    mode: str
    rgb: np.ndarray | None
    width: int = 0
    height: int = 0

    def __post_init__(self):
        if self.rgb is not None:
            object.__setattr__(self, "height", self.rgb.shape[0])
            object.__setattr__(self, "width", self.rgb.shape[1])

    def record(self) -> dict:
        rec = {"name": self.name, "sha256": self.sha256, "width": self.width, "height": self.height,
               "mode": self.mode}
        if self.named:
            rec["named"] = self.named
        return rec


def pyramid_bytes(width: int, height: int) -> int:
    """Upper bound of a source's pyramid: RGBA level 0 plus levels of half the area each (4 x 2 bytes/px)."""
    return 8 * width * height


def cache_dir() -> str:
    """User cache of downloaded named images (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    return user_cache_dir("images")


def download(url: str, dest: str) -> None:
    """Fetch ``url`` to ``dest`` (tests replace this function; they never touch the network)."""
    with urllib.request.urlopen(url, timeout=30) as r, open(dest, "wb") as f:
        f.write(r.read())


def named_image(key: str) -> str:
    """Path of named image ``key``: ``$SOURCE_IMAGE_DIR``, then the user cache, then a checked download."""
    fname, sha = NAMED[key]
    env = os.environ.get("SOURCE_IMAGE_DIR")
    if env:
        path = os.path.join(env, fname)
        if os.path.isfile(path):
            if file_digest(path) != sha:
                raise click.ClickException(f"{path}: sha256 differs from image {key}'s; replace it with the "
                                           f"authors' {fname} or point SOURCE_IMAGE_DIR elsewhere")
            return path
    cached = os.path.join(cache_dir(), fname)
    if os.path.isfile(cached) and file_digest(cached) == sha:
        return cached
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        with atomic_path(cached) as tmp:
            download(URL.format(fname), tmp)
            if file_digest(tmp) != sha:
                raise OSError(f"downloaded {fname} has the wrong sha256")
    except OSError as e:  # URLError is an OSError; so are disk errors in the cache
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
    return Source(name, path, bytes_digest(data), named, mode, rgb)


def load_all(image: str, n: int, seed: int, max_pixels: int = DEFAULT_MAX_PIXELS,
             keep_bytes: int | None = None) -> list[Source]:
    """Resolve ``--image``/``--n`` and decode every chosen source (fails before anything is written).

    Every source is decoded, checked and recorded; its pixels are kept only while the kept sources'
    pyramids fit in ``keep_bytes`` (None: all are kept). ``SourceCache`` decodes the others again where
    they are used, so memory does not grow with N.
    """
    out, kept = [], 0
    for name, path, named in resolve(image, n, seed):
        src = load(name, path, named, max_pixels)
        need = pyramid_bytes(src.width, src.height)
        if keep_bytes is not None and kept + need > keep_bytes:
            src = replace(src, rgb=None)
        else:
            kept += need
        out.append(src)
    return out


class SourceCache:
    """The sources' pyramids, built on first use and kept within ``budget`` bytes (least recently used
    out first; None: no bound). Always holds at least the pyramid in use.

    A source that is not resident is decoded again from its file, which must still have the sha256
    recorded when the render started. Samples cycle through the sources (source = index mod N), where
    plain LRU would miss every time; ``order`` therefore renders a shard's samples resident sources
    first, then grouped by source, so each missing source is decoded at most once per shard. A sample's
    bytes depend on its pyramid only, never on the budget or the order.
    """

    def __init__(self, sources: list[Source], size: int, budget: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.sources = [replace(s, rgb=None) for s in sources]  # records: the pixels live in the pyramids
        self.size, self.budget, self.max_pixels = size, budget, max_pixels
        self._resident: OrderedDict[int, Pyramid] = OrderedDict()
        self._bytes = 0
        for i, s in enumerate(sources):
            if s.rgb is not None and (budget is None or self._bytes + pyramid_bytes(s.width, s.height) <= budget):
                self._put(i, Pyramid(s.rgb, size))

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def holds_all(self) -> bool:
        """True when every source is resident (nothing will ever be decoded again)."""
        return len(self._resident) == len(self.sources)

    def __getitem__(self, i: int) -> Pyramid:
        """The pyramid of source ``i`` (decoded and built again if it is not resident)."""
        p = self._resident.get(i)
        if p is None:
            p = self._load(i)
            self._put(i, p)
        else:
            self._resident.move_to_end(i)
        return p

    def order(self, srcs: list[int]) -> list[int]:
        """Positions of ``srcs`` (one shard's sources) in render order: resident first, then by source."""
        return sorted(range(len(srcs)), key=lambda k: (srcs[k] not in self._resident, srcs[k]))

    def _put(self, i: int, p: Pyramid) -> None:
        while self._resident and self.budget is not None and self._bytes + p.nbytes > self.budget:
            self._bytes -= self._resident.popitem(last=False)[1].nbytes
        self._resident[i] = p
        self._bytes += p.nbytes

    def _load(self, i: int) -> Pyramid:
        s = self.sources[i]
        again = load(s.name, s.path, s.named, self.max_pixels)
        if again.sha256 != s.sha256:
            raise click.ClickException(f"{s.path}: changed since the render started (sha256 differs); restore "
                                       f"it and run the same command again (complete shards are kept)")
        return Pyramid(again.rgb, self.size)


def find_source(record: dict, search: str | None) -> str:
    """Locate a manifest source again (for re-rendering): named lookup, else by sha256 under ``search``."""
    if record.get("named"):
        return named_image(record["named"])
    if search:
        candidates = [search] if os.path.isfile(search) else list_images(search) if os.path.isdir(search) else []
        for p in candidates:
            if os.path.basename(p) == os.path.basename(record["name"]) and file_digest(p) == record["sha256"]:
                return p
        for p in candidates:
            if file_digest(p) == record["sha256"]:
                return p
    raise click.ClickException(f"source {record['name']} (sha256 {record['sha256'][:12]}...) not found; pass "
                               f"--sources FILE_OR_FOLDER holding it")


MAX_NOISE_SIDE = 16384


def write_noise_image(path: str, width: int, height: int, seed: int) -> str:
    """A PNG of i.i.d. uniform 8-bit RGB noise drawn from ``seed`` (a source with no structure, the lower
    reference of distillation); the same arguments give the same bytes. Returns its sha256."""
    if not (1 <= width <= MAX_NOISE_SIDE and 1 <= height <= MAX_NOISE_SIDE):
        raise click.ClickException(f"noise image {width}x{height}: each side must be 1..{MAX_NOISE_SIDE} pixels")
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path, ".png") as tmp:
        Image.fromarray(pixels, "RGB").save(tmp, format="PNG")
    return file_digest(path)
