"""`show`: a grid of random patches of a set, as in the paper's Figs. 7-10 (PIL only)."""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass

import click
import numpy as np
from PIL import Image

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
    m = read_manifest(cfg.folder)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, 0x5E0])))
    picks = sorted(int(i) for i in rng.choice(m.count, size=min(cfg.count, m.count), replace=False))
    by_shard: dict[str, list[int]] = {}
    for i in picks:
        entry = next(s for s in m.shards if s.first <= i < s.first + s.count)
        by_shard.setdefault(m.shard_path(entry), []).append(i)
    tiles = []
    for path, idx in by_shard.items():
        with tarfile.open(path) as tar:
            for i in idx:
                data = tar.extractfile(f"{sample_key(i)}.{m.image_format}").read()
                tiles.append(Image.open(io.BytesIO(data)).convert("RGB"))
    cols = min(cfg.cols, len(tiles))
    rows = -(-len(tiles) // cols)
    s = m.size
    grid = Image.new("RGB", (cols * (s + GAP) - GAP, rows * (s + GAP) - GAP), (255, 255, 255))
    for n, tile in enumerate(tiles):
        grid.paste(tile, ((n % cols) * (s + GAP), (n // cols) * (s + GAP)))
    try:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        grid.save(cfg.out, format="PNG")
    except OSError as e:
        raise click.ClickException(f"--out {cfg.out}: cannot write ({e.strerror or e}); choose another path") from None
    return cfg.out
