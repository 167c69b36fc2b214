"""Labelled image data for the supervised baseline: an ImageFolder tree or torchvision's CIFAR files.

Batches have the shard loader's form, ``(uint8 N x 3 x H x W, int64 labels)``, so ``prepare()``
scales both to the same (-1, 1) range. Order and augmentation are a pure function of (seed, epoch,
sample index), whatever the number of workers: every rank reads ``len // world_size`` samples of a
seeded permutation (equal batch counts on every rank, the last partial batch dropped), and each
sample's transform draws from its own seeded generator. That also makes ``skip`` (mid-epoch resume)
exact.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import click
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from augment.seeds import mix
from train.loader.worker import worker_init

DATASETS = ("imagefolder", "cifar10", "cifar100")


def _to_rgb(im):
    """Greyscale, palette and RGBA images become RGB (168 Tiny-ImageNet val images are greyscale)."""
    return im.convert("RGB")


def transforms_for(arch: str, size: int) -> tuple[Callable, Callable]:
    """(train, eval) transforms: PIL image -> uint8 tensor 3 x size x size.

    AlexNet: RandomResizedCrop + flip / resize to size*256/224 + centre crop (the ImageNet recipe).
    Small encoder on CIFAR-sized images: pad-4 random crop + flip / resize + centre crop.
    """
    from torchvision.transforms import v2

    rgb = v2.Lambda(_to_rgb)
    if arch == "alexnet":
        train = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        evaluate = [v2.Resize(size * 256 // 224, antialias=True), v2.CenterCrop(size)]
    else:
        train = [v2.Resize(size, antialias=True), v2.RandomCrop(size, padding=size // 8, padding_mode="reflect"),
                 v2.RandomHorizontalFlip()]
        evaluate = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    return (v2.Compose([rgb, v2.PILToTensor(), *train]), v2.Compose([rgb, v2.PILToTensor(), *evaluate]))


@dataclass
class Splits:
    train: Dataset
    eval: Dataset | None
    classes: list[str]
    eval_name: str = ""


def _image_folder(path: str, transform: Callable, flag: str = "--data") -> Dataset:
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(path, transform=transform)
    except FileNotFoundError as e:  # no class folder, or class folders without images
        raise click.ClickException(f"{flag} {path}: no images in ImageFolder layout ({e}); expected "
                                   f"{path}/<class>/<image>") from None
    return once_each(ds)


def once_each(ds: Dataset) -> Dataset:
    """Keep each file once: ImageFolder follows symbolic links, so a link loop (a folder linking to its
    parent) lists the same images again at every level, silently multiplying the training set."""
    seen: set[str] = set()
    kept = []
    for path, label in ds.samples:
        try:
            real = os.path.realpath(path, strict=True)
        except OSError as e:
            raise click.ClickException(f"{path}: cannot be read ({e.strerror or e}); a symbolic link to a "
                                       f"missing file, or a link loop: remove it") from None
        if real not in seen:
            seen.add(real)
            kept.append((path, label))
    ds.samples = ds.imgs = kept
    ds.targets = [label for _, label in kept]
    return ds


def open_splits(data: str, dataset: str, train_tf: Callable, eval_tf: Callable,
                flags: tuple[str, str] = ("--data", "--dataset")) -> Splits:
    """Training split and (when present) evaluation split of ``data``; ``flags``: the options that gave
    ``data`` and ``dataset``, which the messages name.

    imagefolder: ``data/train`` (or ``data`` itself when it has no ``train/``), evaluated on
    ``data/val`` or else ``data/test``. cifar10/cifar100: torchvision's files under ``data``.
    """
    flag, layout = flags
    if not os.path.isdir(data):
        what = "a file, not a folder" if os.path.exists(data) else "no such folder"
        raise click.ClickException(f"{flag} {data}: {what}; give a folder in ImageFolder layout "
                                   f"(train/<class>/<image>, val/ or test/ beside it) or torchvision's CIFAR files")
    if dataset in ("cifar10", "cifar100"):
        from torchvision import datasets

        cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
        try:
            tr, ev = cls(data, train=True, transform=train_tf), cls(data, train=False, transform=eval_tf)
        except RuntimeError as e:
            raise click.ClickException(f"{flag} {data}: no {dataset} files there ({e}); download them with "
                                       f"torchvision or use {layout} imagefolder") from None
        return Splits(tr, ev, list(tr.classes), "test")
    if not os.path.isdir(os.path.join(data, "train")):
        # With val/ or test/ there, the folder is split: read as one class each, they would be trained on.
        splits = [n for n in ("val", "test") if os.path.isdir(os.path.join(data, n))]
        if splits:
            raise click.ClickException(f"{flag} {data}: has {splits[0]}/ but no train/; expected "
                                       f"{os.path.join(data, 'train')}/<class>/<image> beside {splits[0]}/")
        tr = _image_folder(data, train_tf, flag)
        return Splits(tr, None, list(tr.classes))
    tr = _image_folder(os.path.join(data, "train"), train_tf, flag)
    for name in ("val", "test"):
        path = os.path.join(data, name)
        if os.path.isdir(path):
            ev = _image_folder(path, eval_tf, flag)
            if ev.classes != tr.classes:
                raise click.ClickException(f"{flag} {path}: classes differ from {data}/train's; both splits "
                                           f"need the same class folders")
            return Splits(tr, ev, list(tr.classes), name)
    return Splits(tr, None, list(tr.classes))


class BadImage(click.ClickException):
    """An image of the folder that cannot be decoded; names the file and the fix."""


def _path(ds: Dataset, i: int) -> str:
    samples = getattr(ds, "samples", None)
    return samples[i][0] if samples else f"sample {i}"


class SeededSamples(Dataset):
    """A dataset whose sample ``i`` is transformed with a generator seeded by (seed, epoch, i).

    An image that cannot be decoded stops the run with one line naming it; with ``skip_bad`` it is
    replaced by the next readable sample (deterministically) and counted in ``skipped`` (shared by the
    DataLoader's worker processes).
    """

    def __init__(self, ds: Dataset, seed: int, skip_bad: bool = False):
        import multiprocessing

        self.ds, self.seed, self.epoch, self.skip_bad = ds, seed, 0, skip_bad
        self.skipped = multiprocessing.get_context("fork").Value("i", 0)

    def __len__(self) -> int:
        return len(self.ds)

    def _get(self, i: int) -> Any:
        # torchvision transforms draw from the global torch RNG: fork it so the caller's is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix(self.seed, self.epoch, i))
            return self.ds[i]

    def __getitem__(self, i: int) -> Any:
        for k in range(len(self.ds)):
            j = (i + k) % len(self.ds)
            try:
                return self._get(j)
            except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for damaged or foreign files
                if not self.skip_bad:
                    raise BadImage(f"{_path(self.ds, j)}: cannot be decoded ({type(e).__name__}: {str(e)[:100]}); "
                                   f"remove or replace it, or pass --skip-bad-images to skip such files") from None
                with self.skipped.get_lock():
                    self.skipped.value += 1
                import sys

                print(f"skipped {_path(self.ds, j)}: cannot be decoded", file=sys.stderr)
        raise BadImage("no image of the folder can be decoded; check --data")


class _Batches:
    """A DataLoader epoch whose bad-image errors from workers become the one line they carry."""

    def __init__(self, dl: DataLoader):
        self.dl = dl

    def __len__(self) -> int:
        return len(self.dl)

    def __iter__(self):
        try:
            yield from self.dl
        except Exception as e:  # a worker re-raises the dataset's exception with its traceback in the text
            if isinstance(e, BadImage) or "BadImage" in type(e).__name__ or "BadImage:" in str(e):
                last = [ln for ln in str(e).strip().splitlines() if ln.strip()][-1]
                raise click.ClickException(last.split("BadImage: ", 1)[-1]) from None
            raise


class _Skip(torch.utils.data.Sampler):
    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


@dataclass
class FolderLoader:
    """Like ``ShardLoader``: ``loader.epoch(e, skip)`` yields (uint8 images, labels) batches."""

    data: SeededSamples
    batch_size: int
    workers: int
    seed: int
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True
    pin_memory: bool = False

    @property
    def batches_per_epoch(self) -> int:
        per_rank = len(self.data) // self.world_size if self.shuffle else -(-len(self.data) // self.world_size)
        return per_rank // self.batch_size if self.shuffle else -(-per_rank // self.batch_size)

    def epoch(self, epoch: int, skip: int = 0) -> _Batches:
        self.data.epoch = epoch
        sampler = DistributedSampler(self.data, num_replicas=self.world_size, rank=self.rank,
                                     shuffle=self.shuffle, seed=self.seed, drop_last=self.shuffle)
        sampler.set_epoch(epoch)
        return _Batches(DataLoader(self.data, batch_size=self.batch_size,
                                   sampler=_Skip(sampler, skip * self.batch_size), num_workers=self.workers,
                                   drop_last=self.shuffle, pin_memory=self.pin_memory,
                                   prefetch_factor=4 if self.workers else None,
                                   worker_init_fn=worker_init if self.workers else None))


def make_folder_loader(ds: Dataset, *, batch_size: int, workers: int, seed: int, rank: int = 0,
                       world_size: int = 1, train: bool = True, pin_memory: bool = False,
                       skip_bad: bool = False) -> FolderLoader:
    """Training loaders shuffle and drop the last partial batch; evaluation loaders keep every sample."""
    if train and len(ds) // world_size < batch_size:
        raise click.ClickException(f"{len(ds)} training images are fewer than one batch of {batch_size} on "
                                   f"each of {world_size} rank(s); lower --batch-size")
    return FolderLoader(SeededSamples(ds, seed, skip_bad), batch_size, workers, seed, rank, world_size, train,
                        pin_memory)
