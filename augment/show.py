"""`show`: a grid of random patches of a set, as in the paper's Figs. 7-10 (PIL only)."""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass

import click
import numpy as np
from PIL import Image

from augment.files import atomic_write, describe_os_error
from augment.manifest import read_manifest
from augment.shards import sample_key

GAP = 2


@dataclass(frozen=True)
class ShowConfig:
    folder: str
    out: str
    count: int = 64
    cols: int = 8
    seed: int = 0


def show(cfg: ShowConfig) -> str:
    """Draw ``count`` random patches (seeded) in a grid with white gaps; returns the PNG's path."""
    if cfg.count <= 0 or cfg.cols <= 0:
        raise click.ClickException("--count and --cols must be positive")
    if os.path.isdir(cfg.out):
        raise click.ClickException(f"--out {cfg.out} is a folder; pass the PNG file to write")
    m = read_manifest(cfg.folder)
    held = sum(e.count for e in m.shards)
    if held != m.count or not held:
        raise click.ClickException(f"{cfg.folder}: its manifest says {m.count} patches but its shards hold {held}; "
                                   f"run `python -m augment verify {cfg.folder}`")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, 0x5E0])))
    if cfg.count > m.count and cfg.count != ShowConfig.count:   # a count asked for, not the default grid
        click.echo(f"--count {cfg.count}: the set holds {m.count} patches; showing all {m.count}", err=True)
    picks = sorted(int(i) for i in rng.choice(m.count, size=min(cfg.count, m.count), replace=False))
    by_shard: dict[str, list[int]] = {}
    for i in picks:
        entry = next(s for s in m.shards if s.first <= i < s.first + s.count)
        by_shard.setdefault(m.shard_path(entry), []).append(i)
    tiles = [tile for path, idx in by_shard.items() for tile in read_tiles(path, idx, m.image_format, cfg.folder)]
    cols = min(cfg.cols, len(tiles))
    rows = -(-len(tiles) // cols)
    s = m.size
    grid = Image.new("RGB", (cols * (s + GAP) - GAP, rows * (s + GAP) - GAP), (255, 255, 255))
    for n, tile in enumerate(tiles):
        grid.paste(tile, ((n % cols) * (s + GAP), (n // cols) * (s + GAP)))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    write_output(cfg.out, buf.getvalue())
    return cfg.out


def read_tiles(path: str, indices: list[int], fmt: str, folder: str) -> list[Image.Image]:
    """Decode samples ``indices`` of one shard; a missing shard, bad tar or bad image is one clear error."""
    tiles = []
    name = f"{sample_key(indices[0])}.{fmt}"
    try:
        with tarfile.open(path) as tar:
            for i in indices:
                name = f"{sample_key(i)}.{fmt}"
                data = tar.extractfile(name).read()
                tiles.append(Image.open(io.BytesIO(data)).convert("RGB"))
    except (OSError, tarfile.TarError, KeyError, ValueError, SyntaxError, AttributeError) as e:
        what = ("missing" if isinstance(e, FileNotFoundError) else f"damaged ({name} is not in it)"
                if isinstance(e, KeyError) else f"damaged ({name} cannot be read: {type(e).__name__})")
        raise click.ClickException(f"{path}: {what}; run `python -m augment verify {folder}`, then re-render "
                                   f"or re-fetch the set") from None
    return tiles


def write_output(out: str, data: bytes) -> None:
    """Write ``data`` to ``out`` atomically: a full disk or an unwritable path is one line, and the
    previous file (if any) is kept and no temporary file is left."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with atomic_write(out) as f:
            f.write(data)
    except OSError as e:
        raise click.ClickException(f"--out {out}: cannot write ({describe_os_error(e, out, need=len(data))})") \
            from None
