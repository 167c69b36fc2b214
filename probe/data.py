"""Probe datasets: CIFAR-10/100 (torchvision's pickles or an ImageFolder tree) and ImageNet-style folders.

Every image leaves here as uint8 ``C x H x W`` RGB; ``train.loader.prepare`` scales it to (-1, 1), the
trainers' input range. Greyscale (and palette, CMYK, RGBA) files are converted with PIL's
``convert("RGB")``, which copies the grey level into all three channels (168 Tiny-ImageNet validation
images need it).

A file that cannot be decoded (not an image, truncated, corrupt) is named in a one-line error and stops
the run; with ``--skip-bad-images`` such files are left out and counted (``BadImages``). Decoding
happens in the loader's workers, which hand back a blank item and the reason, so the main process can
name the file instead of printing a worker traceback.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass

import click
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

DATASETS = ("cifar10", "cifar100", "imagefolder")
PICKLE_DIRS = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                           b"labels"),
               "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels")}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# What PIL raises for a file it cannot decode (UnidentifiedImageError and truncation are OSErrors).
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def pil_rgb(path: str) -> Image.Image:
    """Open an image file as RGB (greyscale and palette images converted)."""
    with open(path, "rb") as f, Image.open(f) as im:
        return im.convert("RGB")


def try_rgb(path: str) -> tuple[Image.Image | None, str]:
    """``(RGB image, "")``, or ``(None, why)`` when the file cannot be decoded."""
    try:
        return pil_rgb(path), ""
    except UnidentifiedImageError:
        return None, "not an image PIL can identify"
    except UNREADABLE as e:
        return None, f"{type(e).__name__}: {e}"


def bad_image_error(path: str, why: str) -> click.ClickException:
    return click.ClickException(f"{path}: not a readable image ({why}); replace or remove the file, or pass "
                                f"--skip-bad-images to leave such files out")


class BadImages:
    """Unreadable files met while loading: the first stops the run, unless ``skip`` (then they are counted)."""

    def __init__(self, skip: bool):
        self.skip, self.found = skip, {}

    def keep(self, paths: list[str], whys: list[str]) -> torch.Tensor:
        """Boolean mask of the readable items of a batch (``whys[i]`` is "" for a readable file)."""
        for path, why in zip(paths, whys):
            if why:
                if not self.skip:
                    raise bad_image_error(path, why)
                self.found.setdefault(path, why)
        return torch.tensor([not why for why in whys], dtype=torch.bool)


def to_uint8(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------- folders


def eval_split_dir(root: str, prefer: tuple[str, ...]) -> str:
    """The evaluation split folder of ``root`` (first of ``prefer`` that exists); a clear error otherwise."""
    if not os.path.isdir(root):
        raise click.ClickException(f"--data-root {root}: no such folder")
    if not os.path.isdir(os.path.join(root, "train")):
        raise click.ClickException(f"--data-root {root}: no train/ folder; expected train/<class>/*.jpg and "
                                   f"{' or '.join(p + '/' for p in prefer)} beside it")
    for name in prefer:
        if os.path.isdir(os.path.join(root, name)):
            return name
    raise click.ClickException(f"--data-root {root}: has train/ but no {' or '.join(p + '/' for p in prefer)} "
                               f"split to evaluate on")


def list_folder(split_dir: str, classes: list[str] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted sub-folders) and ``(path, label)`` samples of an ImageFolder split, sorted."""
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if classes is None:
        classes = found
    elif found != classes:
        extra = sorted(set(found) ^ set(classes))
        raise click.ClickException(f"{split_dir}: class folders differ from train/ ({', '.join(extra[:5])}); "
                                   f"both splits need the same classes")
    if not classes:
        raise click.ClickException(f"{split_dir}: no class folders; expected {split_dir}/<class>/<image>")
    samples = []
    for label, name in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(split_dir, name))):
            samples += [(os.path.join(dirpath, f), label) for f in sorted(files)
                        if f.lower().endswith(IMAGE_EXTS)]
    for path, _ in samples:
        if not os.path.exists(path):   # a symlink whose target is gone: name it, do not fail deep in a loader
            raise click.ClickException(f"{path}: a symbolic link to a missing file ({os.readlink(path)}); "
                                       f"remove the link or restore its target")
    if not samples:
        raise click.ClickException(f"{split_dir}: no images ({', '.join(IMAGE_EXTS)}) under its class folders")
    return classes, samples


def image_size(path: str) -> tuple[int, int] | None:
    """(H, W) from an image file's header; None when the file cannot be identified."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except UNREADABLE:
        return None


def first_image_size(split_dir: str) -> tuple[int, int] | None:
    """(H, W) of the first identifiable image (sorted walk) under ``split_dir``; None when there is none.

    An unreadable file is passed over here: it is named (or skipped) when the images are loaded.
    """
    for dirpath, dirs, files in os.walk(split_dir):
        dirs.sort()
        for f in sorted(files):
            if f.lower().endswith(IMAGE_EXTS) and (size := image_size(os.path.join(dirpath, f))) is not None:
                return size
    return None


def folder_key(samples: list[tuple[str, int]], root: str) -> str:
    """Cheap identity of a folder split: relative paths, labels and byte sizes (contents are not read)."""
    h = hashlib.sha256()
    for path, label in samples:
        h.update(f"{os.path.relpath(path, root)}|{label}|{os.path.getsize(path)}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- CIFAR


@dataclass
class Split:
    """One split of a CIFAR-style dataset: images (in memory or as files), labels and an identity key."""

    name: str
    labels: np.ndarray
    key: str
    images: np.ndarray | None = None          # N x 3 x H x W uint8 (pickles)
    files: list[str] | None = None             # or image files, decoded on demand
    size: tuple[int, int] | None = None        # (H, W) every image must have

    def __len__(self) -> int:
        return len(self.labels)


def find_pickles(root: str, dataset: str) -> str | None:
    sub, train, test, _ = PICKLE_DIRS[dataset]
    for d in (root, os.path.join(root, sub)):
        if all(os.path.isfile(os.path.join(d, f)) for f in train + test):
            return d
    return None


def read_pickles(folder: str, files: list[str], label_key: bytes, name: str) -> Split:
    """torchvision's CIFAR python pickles -> uint8 images N x 3 x 32 x 32 and labels."""
    h, data, labels = hashlib.sha256(), [], []
    for f in files:
        path = os.path.join(folder, f)
        with open(path, "rb") as fh:
            raw = fh.read()
        h.update(raw)
        try:
            d = pickle.loads(raw, encoding="bytes")
            data.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += list(d[label_key])
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise click.ClickException(f"{path}: not a CIFAR python pickle ({type(e).__name__}: {e})") from None
    return Split(name, np.asarray(labels, dtype=np.int64), h.hexdigest(), images=np.concatenate(data),
                 size=(32, 32))


def folder_split(root: str, name: str, classes: list[str] | None) -> tuple[list[str], Split]:
    classes, samples = list_folder(os.path.join(root, name), classes)
    size = next((sz for path, _ in samples if (sz := image_size(path)) is not None), None)
    if size is None:
        raise click.ClickException(f"{os.path.join(root, name)}: none of its {len(samples)} image files can be "
                                   f"read; check the files")
    return classes, Split(name, np.asarray([s[1] for s in samples], dtype=np.int64), folder_key(samples, root),
                          files=[s[0] for s in samples], size=size)


def read_label_names(folder: str, dataset: str) -> list[str]:
    """Class names from ``batches.meta`` / ``meta`` when present, else "0".."9" / "0".."99"."""
    n, meta, key = (10, "batches.meta", b"label_names") if dataset == "cifar10" else (100, "meta", b"fine_label_names")
    try:
        with open(os.path.join(folder, meta), "rb") as f:
            names = [x.decode() for x in pickle.load(f, encoding="bytes")[key]]
        if len(names) == n:
            return names
    except (OSError, pickle.UnpicklingError, KeyError, EOFError, AttributeError):
        pass
    return [str(i) for i in range(n)]


def load_cifar(dataset: str, root: str) -> tuple[list[str], Split, Split]:
    """(classes, train, test) from torchvision's pickles (``cifar-10-batches-py`` / ``cifar-100-python``,
    given or inside ``root``) or from an ImageFolder tree with train/ and test/ (or val/)."""
    if dataset in PICKLE_DIRS:
        sub, train, test, label_key = PICKLE_DIRS[dataset]
        folder = find_pickles(root, dataset)
        if folder is not None:
            tr, te = read_pickles(folder, train, label_key, "train"), read_pickles(folder, test, label_key, "test")
            return read_label_names(folder, dataset), tr, te
        if not os.path.isdir(os.path.join(root, "train")):
            raise click.ClickException(f"--data-root {root}: neither torchvision's {sub}/ pickles nor an "
                                       f"ImageFolder tree with train/ and test/; download CIFAR with torchvision "
                                       f"or extract the JPEG tarball there")
    eval_name = eval_split_dir(root, ("test", "val"))
    classes, tr = folder_split(root, "train", None)
    want = {"cifar10": 10, "cifar100": 100}.get(dataset)
    if want is not None and len(classes) != want:  # results are labelled with the dataset's name
        raise click.ClickException(f"--data-root {root}: {len(classes)} class folders in train/, but --dataset "
                                   f"{dataset} has {want}; for another labelled folder use --dataset imagefolder")
    _, te = folder_split(root, eval_name, classes)
    return classes, tr, te


class SplitImages(Dataset):
    """Items ``(uint8 image, label, size_ok, why)``: ``size_ok`` is False when a file's size differs from
    the split's, ``why`` says why a file could not be decoded ("" when it could).

    Both checks happen here (in the workers) but are reported by the main process, which can name the
    file in a one-line error instead of a worker traceback.
    """

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        s = self.split
        if s.images is not None:
            return torch.from_numpy(s.images[i]), int(s.labels[i]), True, ""
        img, why = try_rgb(s.files[i])
        h, w = s.size
        if img is None or (img.height, img.width) != (h, w):
            return torch.zeros(3, h, w, dtype=torch.uint8), int(s.labels[i]), img is None, why
        return to_uint8(img), int(s.labels[i]), True, ""


# --------------------------------------------------------------------------- ImageNet-style

TRAIN_CROPS = ("fixed", "resized")


def imagenet_transforms(resize: int = 256, crop: int = 224, train_crop: str = "fixed"):
    """Train: ``fixed`` (the paper, RotNet's): shorter edge ``resize``, random ``crop``, h-flip;
    ``resized`` (the released probe code): RandomResizedCrop(``crop``) (area 0.08-1, aspect 3/4-4/3), h-flip.
    Eval: shorter edge ``resize``, the ten crops (corners, centre, and their flips) stacked as
    ``10 x C x crop x crop``. Outputs are uint8."""
    from torchvision import transforms as T

    if train_crop not in TRAIN_CROPS:
        raise ValueError(f"unknown train crop {train_crop!r}: use one of {TRAIN_CROPS}")
    first = [T.Resize(resize), T.RandomCrop(crop)] if train_crop == "fixed" else [T.RandomResizedCrop(crop)]
    train = T.Compose(first + [T.RandomHorizontalFlip(), T.PILToTensor()])
    ten = T.Compose([T.Resize(resize), T.TenCrop(crop), StackCrops()])
    return train, ten


class StackCrops:
    """Tuple of PIL crops -> uint8 ``crops x C x H x W`` (a class, not a lambda: picklable for workers)."""

    def __call__(self, crops) -> torch.Tensor:
        return torch.stack([to_uint8(c) for c in crops])


class FolderImages(Dataset):
    """An ImageFolder split with a transform; items ``(uint8 tensor, label, index, why)``.

    An undecodable file gives a zero tensor of ``blank`` shape and ``why`` (else ""), so that the main
    process names it (``BadImages``).
    """

    def __init__(self, samples: list[tuple[str, int]], transform, blank: tuple[int, ...]):
        self.samples, self.transform, self.blank = samples, transform, blank

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        img, why = try_rgb(path)
        if img is None:
            return torch.zeros(self.blank, dtype=torch.uint8), label, i, why
        return self.transform(img), label, i, ""


def subset(samples: list, limit: int, seed: int) -> list:
    """A seeded random subset of ``limit`` items in their original order (all of them when 0)."""
    if not limit or limit >= len(samples):
        return samples
    keep = np.sort(np.random.default_rng(seed).choice(len(samples), limit, replace=False))
    return [samples[i] for i in keep]
