"""Cache of frozen-backbone features for CIFAR-style probes (no augmentation, so they never change).

One folder per (encoder content hash, dataset identity, dtype), two files per split and layer::

    <cache>/<encoder hash[:16]>-<dataset key[:16]>-<dtype>/
        <split>.<layer>.features    raw rows, N x D in dtype (C order; D = C*H*W flattened)
        <split>.<layer>.json        its record: format, encoder hash, split key, chw, dtype, rows, the sha256
                                    of the features' bytes, labels, and the unreadable files left out

``<cache>`` defaults to the user cache folder ($XDG_CACHE_HOME, else ~/.cache, then
single-image-ssl/features), so results folders hold results only. A 36-epoch probe costs one backbone
pass; later runs (other schedules, seeds, weight decays) cost none. float16 halves the size (small
encoder, CIFAR-10 train: 2.7 GB instead of 5.3 GB); post-ReLU activations lose nothing a linear probe can
use (relative error 2^-11), and values beyond float16's range are refused rather than stored as inf.

Both files are written under temporary names and renamed when complete (``augment.files``), the record
last: it is the completeness marker. A kill or a full disk therefore leaves no partial file under a final
name, and a killed run's temporary files are removed at the next start. Before use each layer is checked
(record readable, same encoder and data, file length, labels); a damaged one is rebuilt, with one line
saying so. When a layer is loaded its bytes are checked against the recorded sha256, so damage inside
the data never reaches a probe. (Raw files rather than HDF5: h5py reports a full disk while closing a
file as tracebacks from object finalisers, which no caller can turn into one line.)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from typing import Callable

import click
import numpy as np
import torch
from torch.utils.data import DataLoader

from augment.files import (atomic_write, bytes_digest, describe_os_error, remove_stale_temps, user_cache_dir,
                           write_text_atomic)
from probe.backbone import Backbone
from probe.data import BadImages, Split, SplitImages, bad_image_error
from train.loader import prepare

FORMAT = "single-image-ssl/feature-cache/2"
DTYPES = ("float16", "float32")


def default_cache_dir() -> str:
    """The user cache folder for features ($XDG_CACHE_HOME or ~/.cache, then single-image-ssl/features)."""
    return user_cache_dir("features")


def entry_dir(cache_dir: str, encoder_hash: str, dataset: str, splits: list[Split], dtype: str) -> str:
    """Folder of the cache entry for this encoder, dataset (content keys of its splits) and dtype."""
    h = hashlib.sha256(dataset.encode())
    for s in splits:
        h.update(f"|{s.name}:{s.key}".encode())
    return os.path.join(cache_dir, f"{encoder_hash[:16]}-{h.hexdigest()[:16]}-{dtype}")


def layer_file(entry: str, split: str, layer: str) -> str:
    """The features file of one split and layer."""
    return os.path.join(entry, f"{split}.{layer}.features")


def record_file(features: str) -> str:
    return features.removesuffix(".features") + ".json"


def make_folder(entry: str) -> None:
    try:
        os.makedirs(entry, exist_ok=True)
    except OSError as e:
        raise click.ClickException(f"--cache: {describe_os_error(e, entry)}") from None


def check_space(folder: str, need: int) -> None:
    """Refuse to start a backbone pass whose cache files cannot fit (the pass costs minutes)."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise click.ClickException(f"{folder}: the feature cache needs about {need:,} bytes and {free:,} are "
                                   f"free; free some space or pass --cache DIR on a larger disk")


# --------------------------------------------------------------------------- checking what is there


def read_record(path: str) -> dict:
    with open(record_file(path)) as f:
        return json.load(f)


def status(path: str, split: Split, encoder_hash: str) -> str | None:
    """None when the layer is absent, "" when it is a complete cache of ``split``, else what is wrong."""
    if not os.path.exists(record_file(path)):
        return None if not os.path.exists(path) else "its record is missing (an interrupted write)"
    try:
        rec = read_record(path)
        if rec.get("format") != FORMAT:
            return "not a cache file of this version"
        if rec["encoder_hash"] != encoder_hash or rec["split_key"] != split.key:
            return "written for another encoder or data"
        size = rec["rows"] * math.prod(rec["chw"]) * np.dtype(rec["dtype"]).itemsize
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return f"its features file is not {size:,} bytes long"
        labels, keep = np.asarray(rec["labels"], dtype=np.int64), kept_index(len(split), rec["skipped_index"])
        if len(labels) != rec["rows"] or len(keep) != rec["rows"] or not np.array_equal(split.labels[keep], labels):
            return "its labels differ from the data's"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable record ({type(e).__name__})"
    return ""


def kept_index(n: int, skipped_index: list[int]) -> np.ndarray:
    """Positions in a split of ``n`` that a cache file holds (all but the skipped ones)."""
    keep = np.ones(n, dtype=bool)
    keep[np.asarray(skipped_index, dtype=np.int64)] = False
    return np.flatnonzero(keep)


# --------------------------------------------------------------------------- writing


class LayerWriter:
    """One layer's features, streamed into a temporary file (renamed by the caller's stack when complete)."""

    def __init__(self, stack: contextlib.ExitStack, path: str, chw: tuple[int, ...], dtype: str):
        self.path, self.chw, self.dtype = path, chw, dtype
        with contextlib.suppress(FileNotFoundError):
            os.remove(record_file(path))  # a rebuilt layer has no record until its features are complete
        self.f = stack.enter_context(atomic_write(path, "wb"))
        self.rows, self.sha, self.labels = 0, hashlib.sha256(), []

    def add(self, feats: torch.Tensor, labels: torch.Tensor, split: str, layer: str) -> None:
        arr = np.ascontiguousarray(feats.flatten(1).float().cpu().numpy().astype(self.dtype))
        if not np.isfinite(arr).all():
            raise click.ClickException(f"{layer} features of the {split} split overflow {self.dtype} (max "
                                       f"{feats.abs().max().item():.3g}); use --cache-dtype float32")
        data = memoryview(arr).cast("B")
        self.f.write(data)
        self.sha.update(data)
        self.rows += len(arr)
        self.labels += labels.tolist()

    def record(self, encoder_hash: str, split: Split, skipped: dict[str, int], whys: dict[str, str]) -> dict:
        """The record that marks the features complete (written, atomically, once they are renamed)."""
        return {"format": FORMAT, "encoder_hash": encoder_hash, "split": split.name, "split_key": split.key,
                "chw": list(self.chw), "dtype": self.dtype, "rows": self.rows, "sha256": self.sha.hexdigest(),
                "labels": self.labels, "skipped": {p: whys[p] for p in skipped},
                "skipped_index": sorted(skipped.values())}


def feature_shapes(backbone: Backbone, split: Split, layers: list[str],
                   device: torch.device) -> dict[str, tuple[int, ...]]:
    """``C x H x W`` of each layer on the split's image size (a shape probe, not counted as a data pass)."""
    feats = backbone.features(torch.zeros(1, backbone.encoder.spec.in_channels, *split.size, device=device), layers)
    backbone.forward_calls -= 1
    return {n: tuple(f.shape[1:]) for n, f in feats.items()}


def _batch_keep(split: Split, lo: int, size_ok: torch.Tensor, whys: list[str], bad: BadImages) -> torch.Tensor:
    """Which items of the batch at ``lo`` to keep; a wrong-size image stops the run, naming the file."""
    if not bool(size_ok.all()):
        path = split.files[lo + int((~size_ok).nonzero()[0, 0])]
        raise click.ClickException(f"{path}: image size differs from the split's {split.size[0]}x"
                                   f"{split.size[1]}; CIFAR-style probes need one image size")
    paths = split.files[lo:lo + len(whys)] if split.files is not None else [""] * len(whys)
    return bad.keep(paths, list(whys))


def _backbone_pass(backbone: Backbone, split: Split, layers: list[str], entry: str, shapes: dict, *,
                   batch_size: int, workers: int, device: torch.device, dtype: str, bad: BadImages,
                   progress: Callable) -> tuple[int, list[dict]]:
    """The pass itself; each layer's features are renamed complete as the ``with`` closes."""
    loader = DataLoader(SplitImages(split), batch_size=batch_size, shuffle=False, num_workers=workers)
    skipped, lo, batches = {}, 0, 0
    with contextlib.ExitStack() as stack:
        writers = [LayerWriter(stack, layer_file(entry, split.name, n), shapes[n], dtype) for n in layers]
        for images, labels, size_ok, whys in progress(loader, total=len(loader), desc=f"features {split.name}"):
            keep = _batch_keep(split, lo, size_ok, whys, bad)
            skipped |= {split.files[lo + i]: lo + i for i in (~keep).nonzero()[:, 0].tolist()}
            if bool(keep.any()):
                feats = backbone.features(prepare(images[keep], device), layers)
                for n, w in zip(layers, writers):
                    w.add(feats[n], labels[keep], split.name, n)
            lo += len(images)
            batches += 1
        records = [w.record(backbone.encoder_hash, split, skipped, bad.found) for w in writers]
    return batches, records


def extract(backbone: Backbone, split: Split, layers: list[str], entry: str, *, batch_size: int,
            workers: int, device: torch.device, dtype: str = "float16", skip_bad: bool = False,
            progress: Callable = lambda it, **kw: it) -> tuple[int, dict[str, str]]:
    """Run the backbone once over ``split`` and cache ``layers``; returns (batches run, skipped files)."""
    make_folder(entry)
    shapes = feature_shapes(backbone, split, layers, device)
    need = sum(len(split) * (math.prod(s) * np.dtype(dtype).itemsize + 8) for s in shapes.values())
    check_space(entry, need)
    bad = BadImages(skip_bad)
    try:
        batches, records = _backbone_pass(backbone, split, layers, entry, shapes, batch_size=batch_size,
                                          workers=workers, device=device, dtype=dtype, bad=bad, progress=progress)
        for n, rec in zip(layers, records):
            write_text_atomic(record_file(layer_file(entry, split.name, n)), json.dumps(rec))
    except OSError as e:
        raise click.ClickException(f"{describe_os_error(e, layer_file(entry, split.name, layers[0]), need)} "
                                   f"(--cache DIR puts the feature cache elsewhere)") from None
    return batches, dict(bad.found)


def ensure(backbone: Backbone, splits: list[Split], layers: list[str], entry: str, *, skip_bad: bool = False,
           echo: Callable[[str], None] = lambda line: click.echo(line, err=True), **kw) -> dict[str, dict]:
    """Fill the cache entry with whatever ``layers`` it lacks (or holds damaged) for each split.

    Reports per split: hit, layers extracted, layers rebuilt (damaged), backbone batches and skipped files.
    A cache that left unreadable images out is only used with ``skip_bad`` (else the first is named).
    """
    remove_stale_temps(entry)  # temporary files of killed runs
    stats = {}
    for split in splits:
        why = {n: status(layer_file(entry, split.name, n), split, backbone.encoder_hash) for n in layers}
        for n in layers:
            if why[n]:
                echo(f"feature cache {layer_file(entry, split.name, n)}: damaged ({why[n]}); rebuilding it")
        missing = [n for n in layers if why[n] != ""]
        present = [n for n in layers if why[n] == ""]
        skipped = read_record(layer_file(entry, split.name, present[0]))["skipped"] if present else {}
        if skipped and not skip_bad:
            raise bad_image_error(*next(iter(skipped.items())))
        batches = 0
        if missing:
            batches, skipped = extract(backbone, split, missing, entry, skip_bad=skip_bad, **kw)
        stats[split.name] = {"hit": not missing, "layers_extracted": missing,
                             "layers_rebuilt": [n for n in layers if why[n]], "backbone_batches": batches,
                             "skipped_images": skipped}
    return stats


# --------------------------------------------------------------------------- reading


def load_layer(entry: str, split: str, layer: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(features N x D in the cache's dtype, labels N, activation shape C x H x W) of one layer.

    Features whose bytes no longer match their sha256 are removed, with an error asking for a rerun
    (which rebuilds them): damaged features never reach a probe.
    """
    path = layer_file(entry, split, layer)
    rec = read_record(path)
    x = np.fromfile(path, dtype=rec["dtype"])
    if bytes_digest(memoryview(x).cast("B")) != rec["sha256"]:
        for name in (path, record_file(path)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)
        raise click.ClickException(f"feature cache {path}: damaged (its bytes differ from their sha256); "
                                   f"removed it, run the same command again to rebuild it")
    chw = tuple(rec["chw"])
    return x.reshape(rec["rows"], math.prod(chw)), np.asarray(rec["labels"], dtype=np.int64), chw


def remove_entry_files(entry: str, splits: list[str], layers: list[str]) -> None:
    """Delete these splits' and layers' files (``--drop-cache``), and the entry folder once empty."""
    for split in splits:
        for n in layers:
            for name in (layer_file(entry, split, n), record_file(layer_file(entry, split, n))):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(name)
    with contextlib.suppress(OSError):
        os.rmdir(entry)
