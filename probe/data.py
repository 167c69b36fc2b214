"""Probe datasets: CIFAR-10/100 (torchvision's pickles or an ImageFolder tree) and ImageNet-style folders.

Every image leaves here as uint8 ``C x H x W`` RGB; ``train.loader.prepare`` scales it to (-1, 1), the
trainers' input range. Greyscale (and palette, CMYK, RGBA) files are converted with PIL's
``convert("RGB")``, which copies the grey level into all three channels (168 Tiny-ImageNet validation
images need it).
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass

import click
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

DATASETS = ("cifar10", "cifar100", "imagefolder")
PICKLE_DIRS = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                           b"labels"),
               "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels")}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def pil_rgb(path: str) -> Image.Image:
    """Open an image file as RGB (greyscale and palette images converted)."""
    with open(path, "rb") as f, Image.open(f) as im:
        return im.convert("RGB")


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
    if not samples:
        raise click.ClickException(f"{split_dir}: no images ({', '.join(IMAGE_EXTS)}) under its class folders")
    return classes, samples


def first_image_size(split_dir: str) -> tuple[int, int] | None:
    """(H, W) of the first image (sorted walk) under ``split_dir``; None when there is none."""
    for dirpath, dirs, files in os.walk(split_dir):
        dirs.sort()
        for f in sorted(files):
            if f.lower().endswith(IMAGE_EXTS):
                with Image.open(os.path.join(dirpath, f)) as im:
                    return im.height, im.width
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
    first = pil_rgb(samples[0][0])
    return classes, Split(name, np.asarray([s[1] for s in samples], dtype=np.int64), folder_key(samples, root),
                          files=[s[0] for s in samples], size=(first.height, first.width))


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
    _, te = folder_split(root, eval_name, classes)
    return classes, tr, te


class SplitImages(Dataset):
    """Items ``(uint8 image, label, ok)``; ``ok`` is False when a file's size differs from the split's.

    The size check happens here (in the workers) but is reported by the main process, which can name
    the file in a one-line error instead of a worker traceback.
    """

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        s = self.split
        if s.images is not None:
            return torch.from_numpy(s.images[i]), int(s.labels[i]), True
        img = pil_rgb(s.files[i])
        h, w = s.size
        if (img.height, img.width) != (h, w):
            return torch.zeros(3, h, w, dtype=torch.uint8), int(s.labels[i]), False
        return to_uint8(img), int(s.labels[i]), True


# --------------------------------------------------------------------------- ImageNet-style


def imagenet_transforms(resize: int = 256, crop: int = 224):
    """Train: shorter edge ``resize``, random ``crop``, h-flip; eval: the ten crops (corners, centre,
    and their flips) stacked as ``10 x C x crop x crop``. Outputs are uint8."""
    from torchvision import transforms as T

    train = T.Compose([T.Resize(resize), T.RandomCrop(crop), T.RandomHorizontalFlip(), T.PILToTensor()])
    ten = T.Compose([T.Resize(resize), T.TenCrop(crop), StackCrops()])
    return train, ten


class StackCrops:
    """Tuple of PIL crops -> uint8 ``crops x C x H x W`` (a class, not a lambda: picklable for workers)."""

    def __call__(self, crops) -> torch.Tensor:
        return torch.stack([to_uint8(c) for c in crops])


class FolderImages(Dataset):
    """An ImageFolder split with a transform (items: ``(uint8 tensor, label)``)."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return self.transform(pil_rgb(path)), label


def subset(samples: list, limit: int, seed: int) -> list:
    """A seeded random subset of ``limit`` items in their original order (all of them when 0)."""
    if not limit or limit >= len(samples):
        return samples
    keep = np.sort(np.random.default_rng(seed).choice(len(samples), limit, replace=False))
    return [samples[i] for i in keep]
