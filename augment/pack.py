"""`python -m augment pack FOLDER --out SET`: an ImageFolder (e.g. CIFAR-10 train) as a shard set, unchanged.

The trainers read shard sets; a method's *dataset* baseline (RotNet on CIFAR-10 train, the paper's Table 3
row) needs the same images as a set. Each image's file bytes are stored as they are (no decoding, no
re-encoding, no augmentation), in an order drawn from ``--seed`` (the loader's shuffle buffer mixes only
within a few thousand samples, so a class-sorted set would give class-sorted batches). The manifest
records the folder's listing digest as the one source, so the set id changes with any file.
"""
from __future__ import annotations

import hashlib
import json
import os

import click
import numpy as np
from PIL import Image, UnidentifiedImageError

from augment.cli import cli
from augment.files import remove_stale_temps
from augment.lock import folder_lock
from augment.manifest import MANIFEST, write_manifest
from augment.render import versions
from augment.shards import sample_key, shard_name, write_shard

EXTENSIONS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}


def list_images(folder: str) -> list[tuple[str, int]]:
    """(path relative to ``folder``, class index) of every image, classes and files in sorted order."""
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    items = [(os.path.join(c, f), ci) for ci, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(folder, c)))
             if os.path.splitext(f)[1].lower() in EXTENSIONS]
    if not items:
        raise click.ClickException(f"{folder}: no images in class sub-folders (an ImageFolder has "
                                   f"FOLDER/<class>/<image>.jpg|png); pass the train/ folder itself")
    return items


def folder_name(folder: str) -> str:
    """The folder's last two path parts (``cifar10/train``): names the data without a machine path."""
    parts = os.path.normpath(os.path.abspath(folder)).split(os.sep)
    return "/".join(parts[-2:])


def _probe(folder: str, items: list[tuple[str, int]]) -> tuple[str, int]:
    """The one image format and square size every image shares; else one error naming the first misfit."""
    kinds, sizes = set(), set()
    for rel, _ in items:
        try:
            with Image.open(os.path.join(folder, rel)) as im:
                size = im.size
        except (OSError, UnidentifiedImageError) as e:
            raise click.ClickException(f"{os.path.join(folder, rel)}: not a readable image ({e})") from None
        kinds.add(EXTENSIONS[os.path.splitext(rel)[1].lower()])
        sizes.add(size)
        if len(kinds) > 1 or len(sizes) > 1 or size[0] != size[1]:
            raise click.ClickException(f"{os.path.join(folder, rel)}: {size[0]}x{size[1]} {kinds}; a shard set "
                                       f"holds square images of one size and format: resize the folder first")
    return kinds.pop(), sizes.pop()[0]


def pack(folder: str, out: str, seed: int = 0, samples_per_shard: int = 1000) -> str:
    """Write the images of ``folder`` as a shard set at ``out``; returns its id."""
    items = list_images(folder)
    fmt, size = _probe(folder, items)
    order = np.random.default_rng(seed).permutation(len(items))
    listing = hashlib.sha256()
    if os.path.exists(os.path.join(out, MANIFEST)):
        raise click.ClickException(f"{out}: already holds a shard set; pass a new --out (or delete that folder)")
    with folder_lock(out, f"pack {folder} into {out}"):
        remove_stale_temps(out, locked=True)
        shards = []
        for first in range(0, len(items), samples_per_shard):
            def samples(first=first):
                for i in range(first, min(first + samples_per_shard, len(items))):
                    rel, label = items[order[i]]
                    with open(os.path.join(folder, rel), "rb") as f:
                        data = f.read()
                    listing.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
                    meta = json.dumps({"index": i, "file": rel, "class": label}, sort_keys=True).encode()
                    yield sample_key(i), {fmt: data, "json": meta}
            shards.append(write_shard(os.path.join(out, shard_name(first // samples_per_shard)), first,
                                      samples()).to_json())
        config = {"kind": "imagefolder", "count": len(items), "size": size, "image_format": fmt, "seed": seed,
                  "samples_per_shard": samples_per_shard, "order": "permutation(seed)"}
        return write_manifest(out, {
            "count": len(items), "size": size, "image_format": fmt, "seed": seed,
            "samples_per_shard": samples_per_shard, "config": config,
            "sources": [{"name": folder_name(folder), "files": len(items),
                         "sha256": listing.hexdigest()}],
            "shards": shards, "versions": versions(), "command": "pack",
            # What the set is: a dataset, not a single image (outside the identity payload, like
            # "versions"; config's "kind": "imagefolder", which is hashed, says the same).
            "kind": "packed", "images": len(items)})


@cli.command("pack")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, help="Folder of the shard set to write.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Draws the order of the images.")
@click.option("--samples-per-shard", type=click.IntRange(1), default=1000, show_default=True)
def pack_cli(folder, out, seed, samples_per_shard) -> None:
    """Pack an ImageFolder (FOLDER/<class>/<image>) as a shard set, bytes unchanged (no augmentation)."""
    set_id = pack(folder, out, seed, samples_per_shard)
    click.echo(f"{out}: {set_id}")
