"""One loader for every trainer: a shard set streamed through multi-worker WebDataset pipelines.

Equal batches on every rank by construction. webdataset's DDP epochs hang when ranks receive
different numbers of batches from uneven shards, so the epoch length is not "whatever the shards
hold" but a number fixed up front from the manifest::

    batches_per_rank = count // (world_size * batch_size)

Each (rank, worker) slot reads its own shards as an endless cycle and stops after its share of
``batches_per_rank``; every rank therefore yields exactly the same number of full batches. The price,
documented in docs/training.md: in an epoch a few samples of a short slot are seen twice and the same
number of others are not seen, and the final partial batch is dropped.

Order is a pure function of (seed, epoch): shards are permuted per epoch with a seeded RNG, the
shuffle buffer and the native augmentation of each slot draw from generators seeded by (seed, epoch,
rank, worker), and a DataLoader over IterableDatasets yields worker batches in a fixed round-robin.

Batches leave the workers as uint8 (4x less inter-process traffic than float); ``prepare()`` scales
to (-1, 1) on the device, the paper's input range.
"""
from __future__ import annotations

import io
import itertools
import os
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import click
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from augment.manifest import Manifest, read_manifest

# A native augmentation: (uint8 C x H x W tensor, generator) -> uint8 tensor of the method's input size.
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike ``hash()``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0]
               >> 1)


def decode_image(data: bytes, how: str = "torchvision") -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 RGB tensor C x H x W."""
    if how == "torchvision":
        from torchvision.io import ImageReadMode, decode_image as tv_decode

        return tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def prepare(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 batch -> float on ``device`` in (-1, 1) (the paper's input range)."""
    x = images.to(device, non_blocking=True).float()
    return x.div_(127.5).sub_(1.0)


@dataclass(frozen=True)
class StreamSpec:
    urls: tuple[str, ...]
    batch_size: int
    batches_per_rank: int
    seed: int
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 2000
    decode: str = "torchvision"
    image_ext: str = "jpg"


def assign_shards(n_shards: int, seed: int, epoch: int, slot: int, n_slots: int) -> list[int]:
    """Shards read by one (rank, worker) slot this epoch: a seeded permutation dealt round-robin.

    With fewer shards than slots, a slot shares one shard with others (its own shuffle differs).
    """
    order = list(range(n_shards))
    random.Random(_mix(seed, epoch, 0x5A4D)).shuffle(order)
    mine = order[slot::n_slots]
    return mine or [order[slot % n_shards]]


def worker_share(total: int, worker: int, workers: int) -> int:
    """Batches produced by ``worker`` out of ``total`` for its rank (shares differ by at most one)."""
    return total // workers + (1 if worker < total % workers else 0)


class ShardStream(IterableDataset):
    """Yields ``(images uint8 N x C x H x W, indices int64 N)`` batches for one rank and epoch."""

    def __init__(self, spec: StreamSpec, transform: Transform | None, epoch: int = 0):
        super().__init__()
        self.spec, self.transform, self.epoch = spec, transform, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s = self.spec
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        slot, n_slots = s.rank * workers + worker, s.world_size * workers
        shards = [s.urls[i] for i in assign_shards(len(s.urls), s.seed, self.epoch, slot, n_slots)]
        n_batches = worker_share(s.batches_per_rank, worker, workers)
        slot_seed = _mix(s.seed, self.epoch, s.rank, worker)
        gen = torch.Generator().manual_seed(slot_seed)
        ext, how, transform = s.image_ext, s.decode, self.transform

        def to_pair(sample: dict) -> tuple[torch.Tensor, int]:
            img = decode_image(sample[ext], how)
            if transform is not None:
                img = transform(img, gen)
            return img, int(sample["__key__"])

        def collate(items: list[tuple[torch.Tensor, int]]):
            return (torch.stack([i for i, _ in items]),
                    torch.tensor([k for _, k in items], dtype=torch.int64))

        pipeline = wds.DataPipeline(
            # 1. this slot's shards, cycled so that every slot can fill its share of batches
            lambda: ({"url": u} for u in itertools.cycle(shards)),
            # 2. tar members -> samples grouped by key ({"__key__", "jpg", "json"})
            wds.tarfile_to_samples(),
            # 3. shuffle within a buffer, seeded per (seed, epoch, rank, worker)
            wds.shuffle(s.shuffle_buffer, initial=min(s.shuffle_buffer, 100),
                        rng=random.Random(slot_seed)),
            # 4. decode + the method's native augmentation (crop, flip), still uint8
            wds.map(to_pair),
            # 5. full batches only
            wds.batched(s.batch_size, collation_fn=collate, partial=False),
        )
        yield from itertools.islice(pipeline, n_batches)


@dataclass
class ShardLoader:
    """A DataLoader over one shard set, re-seeded each epoch: ``for x, idx in loader.epoch(e)``."""

    manifest: Manifest
    stream: ShardStream
    workers: int
    pin_memory: bool = False

    @property
    def batches_per_epoch(self) -> int:
        return self.stream.spec.batches_per_rank

    def epoch(self, epoch: int) -> DataLoader:
        self.stream.set_epoch(epoch)
        # Workers are not persistent: each epoch's workers pickle the stream with its new epoch.
        return DataLoader(self.stream, batch_size=None, num_workers=self.workers,
                          pin_memory=self.pin_memory, prefetch_factor=4 if self.workers else None)


def check_local_shards(m: Manifest) -> None:
    """Cheap pre-flight for local sets: every shard exists with the manifest's byte size."""
    if "://" in m.root:
        return
    for entry in m.shards:
        path = m.shard_path(entry)
        if not os.path.isfile(path):
            raise click.ClickException(f"{path}: shard missing from the set; run "
                                       f"`python -m augment verify {m.root}` and re-render or re-fetch it")
        if os.path.getsize(path) != entry.bytes:
            raise click.ClickException(f"{path}: {os.path.getsize(path)} bytes, manifest says {entry.bytes}; "
                                       f"the shard is damaged: `python -m augment verify {m.root}`")


def make_loader(shards: str | Manifest, *, batch_size: int, workers: int, seed: int,
                transform: Transform | None = None, rank: int = 0, world_size: int = 1,
                shuffle_buffer: int = 2000, decode: str = "torchvision",
                sizes: Sequence[int] | None = None, pin_memory: bool = False) -> ShardLoader:
    """Build the loader for a shard set (folder, manifest path or URL).

    ``sizes``: the patch sizes S this method accepts; another size is a clear error naming ``--size``.
    """
    m = shards if isinstance(shards, Manifest) else read_manifest(shards)
    if sizes is not None and m.size not in sizes:
        want = " or ".join(str(s) for s in sizes)
        raise click.ClickException(f"{m.root}: patches are {m.size}x{m.size} but this method needs S = {want}; "
                                   f"render a set with `python -m augment render --size {sizes[0]}`")
    check_local_shards(m)
    per_rank = m.count // (world_size * batch_size)
    if per_rank < 1:
        raise click.ClickException(f"{m.root}: {m.count} samples are fewer than one batch of {batch_size} "
                                   f"on each of {world_size} rank(s); lower --batch-size")
    spec = StreamSpec(urls=tuple(m.shard_urls), batch_size=batch_size, batches_per_rank=per_rank,
                      seed=seed, rank=rank, world_size=world_size, shuffle_buffer=shuffle_buffer,
                      decode=decode, image_ext=m.image_format)
    return ShardLoader(m, ShardStream(spec, transform), workers, pin_memory)


# --------------------------------------------------------------------------- native augmentations


def random_crop_flip(size: int, flip: bool = True) -> Transform:
    """RotNet / BiGAN native augmentation: a non-scaled random ``size`` crop and a horizontal flip."""

    def t(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        _, h, w = img.shape
        if h < size or w < size:
            raise ValueError(f"patch {h}x{w} is smaller than the {size} crop")
        y = int(torch.randint(0, h - size + 1, (1,), generator=g))
        x = int(torch.randint(0, w - size + 1, (1,), generator=g))
        out = img[:, y:y + size, x:x + size]
        if flip and torch.rand(1, generator=g).item() < 0.5:
            out = out.flip(-1)
        return out.contiguous()

    return t


def random_resized_crop_flip(size: int, scale: tuple[float, float] = (0.08, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Transform:
    """DeepCluster native augmentation: RandomResizedCrop(size, scale, ratio) + horizontal flip."""
    import math

    from torchvision.transforms.v2 import functional as F

    log_r = (math.log(ratio[0]), math.log(ratio[1]))

    def t(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        _, h, w = img.shape
        area = h * w
        for _ in range(10):
            a = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=g).item())
            r = math.exp(log_r[0] + (log_r[1] - log_r[0]) * torch.rand(1, generator=g).item())
            cw, ch = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
            if 0 < cw <= w and 0 < ch <= h:
                y = int(torch.randint(0, h - ch + 1, (1,), generator=g))
                x = int(torch.randint(0, w - cw + 1, (1,), generator=g))
                break
        else:  # torchvision's fallback: the whole image (the aspect bounds always admit a square patch)
            y, x, ch, cw = 0, 0, h, w
        out = F.resized_crop(img, y, x, ch, cw, [size, size], antialias=True)
        if torch.rand(1, generator=g).item() < 0.5:
            out = out.flip(-1)
        return out.contiguous()

    return t


def center_crop(size: int) -> Transform:
    """Deterministic centre crop (DeepCluster's feature pass, evaluation)."""

    def t(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        _, h, w = img.shape
        y, x = (h - size) // 2, (w - size) // 2
        return img[:, y:y + size, x:x + size].contiguous()

    return t
