"""One loader for every trainer: a shard set streamed through multi-worker DataLoader pipelines.

Stages of one (rank, worker) slot, in order::

    1. plan      pieces of shards for this slot, balanced by the manifest's counts  (plan_epoch)
    2. read      tar members -> samples grouped by key, via webdataset's tar reader (_read_piece_samples)
    3. shuffle   a buffer of ``shuffle_buffer`` samples, seeded per (seed, epoch, slot, pass)
    4. quota     stop after this slot's share of the rank's fixed number of batches
    5. decode    torchvision.io.decode_image (measured faster than pillow-simd: docs/training.md)
    6. augment   the method's native augmentation, one seeded generator per sample position
    7. batch     full uint8 batches; ``prepare()`` scales to (-1, 1) on the device

Equal batches on every rank by construction. webdataset's DDP epochs hang when ranks receive
different numbers of batches from uneven shards, so the epoch length is not "whatever the shards
hold" but a number fixed up front from the manifest::

    batches_per_rank = count // (world_size * batch_size)

Workers of a rank share those batches round-robin (shares differ by at most one). A slot whose pieces
hold fewer samples than its quota starts a second pass; one with more leaves some out. The price,
documented in docs/training.md: with uneven shards a few samples are seen twice in an epoch and as
many are not seen, and the final partial batch is dropped.

Order is a pure function of (seed, epoch, world size, workers): the plan, every shuffle and every
sample's augmentation draw from generators seeded by those numbers, and a DataLoader over
IterableDatasets yields worker batches in a fixed round-robin. That also gives exact mid-epoch
resume: ``loader.epoch(e, skip=k)`` yields batches k, k+1, ... of epoch e, identical to the original.

Batches leave the workers as uint8 (4x less inter-process traffic than float).
"""
from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import click
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from augment.manifest import Manifest, open_location, read_manifest

# A native augmentation: (uint8 C x H x W tensor, generator) -> uint8 tensor of the method's input size.
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike ``hash()``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0]
               >> 1)


PNG_MAGIC = b"\x89PNG"


def _sample_seed(slot_seed: int, pos: int) -> int:
    """Seed of one sample's augmentation: cheap (called per sample), distinct per position."""
    return (slot_seed ^ (pos * 0x9E3779B97F4A7C15)) & 0x7FFFFFFFFFFFFFFF


def decode_image(data: bytes, how: str = "torchvision") -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 RGB tensor C x H x W.

    ``torchvision`` (the default, faster than pillow-simd on JPEG: tests/bench/loader.py) decodes
    JPEG only: PNG goes through Pillow, because torchvision 0.29's libpng path crashes the process
    (segfault) on a damaged PNG instead of raising.
    """
    if how == "torchvision" and not data.startswith(PNG_MAGIC):
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
    counts: tuple[int, ...] = ()   # samples per shard (manifest); empty: assume equal shards
    firsts: tuple[int, ...] = ()   # global index of each shard's first sample


class ShardError(RuntimeError):
    """A shard could not be read mid-epoch; the message starts with its URL."""


def assign_shards(n_shards: int, seed: int, epoch: int, slot: int, n_slots: int) -> list[int]:
    """Shards read by one (rank, worker) slot this epoch: a seeded permutation dealt round-robin.

    With fewer shards than slots, a slot shares one shard with others (its own shuffle differs).
    Kept for callers that know only the shard count; the loader itself uses ``plan_epoch``.
    """
    order = list(range(n_shards))
    random.Random(_mix(seed, epoch, 0x5A4D)).shuffle(order)
    mine = order[slot::n_slots]
    return mine or [order[slot % n_shards]]


# A piece of a shard: (shard index, k, j) = the samples whose position in the shard is j modulo k.
Piece = tuple[int, int, int]


def plan_epoch(counts: Sequence[int], seed: int, epoch: int, n_slots: int) -> list[list[Piece]]:
    """Pieces of shards read by each (rank, worker) slot in one epoch, balanced by sample count.

    With fewer than four shards per slot, each shard is cut into k interleaved pieces (every k-th
    sample) so that there are at least four pieces per slot; pieces are dealt largest first to the
    least-loaded slot (a seeded permutation breaks ties), so uneven shards still give near-equal loads.
    Cutting costs reads, not decodes: a shard cut in k is read k times (by different slots).
    """
    k = -(-4 * n_slots // len(counts))
    pieces = [(s, k, j) for s in range(len(counts)) for j in range(k)]
    random.Random(_mix(seed, epoch, 0x5A4D)).shuffle(pieces)
    size = {p: len(range(p[2], counts[p[0]], k)) for p in pieces}
    pieces.sort(key=lambda p: -size[p])            # stable: equal sizes keep the seeded order
    plan: list[list[Piece]] = [[] for _ in range(n_slots)]
    load = [0] * n_slots
    for p in pieces:
        i = min(range(n_slots), key=lambda i: (load[i], i))
        plan[i].append(p)
        load[i] += size[p]
    for i in range(n_slots):
        if load[i] == 0:                            # only for sets with fewer samples than slots
            plan[i] = [max(pieces, key=lambda p: size[p])]
    return plan


def worker_share(total: int, worker: int, workers: int) -> int:
    """Batches produced by ``worker`` out of ``total`` for its rank (shares differ by at most one)."""
    return total // workers + (1 if worker < total % workers else 0)


def skipped_per_role(skip: int, role: int, workers: int) -> int:
    """Batches of worker role ``role`` among the first ``skip`` of an epoch (batches are dealt
    round-robin, batch b from role b % workers)."""
    return skip // workers + (1 if role < skip % workers else 0)


def _read_piece_samples(urls: Sequence[str], counts: Sequence[int], pieces: Sequence[Piece]) -> Iterator[dict]:
    """Samples of ``pieces`` in order; a tar error, or a shard that ends before the manifest's count
    (Python's tar reader takes a damaged header for the end of the archive), names the shard."""
    for s, k, j in pieces:
        url, pos = urls[s], 0
        try:
            # open_location (local, http(s) via urllib, fsspec) rather than webdataset's gopen, which
            # streams http(s) through a `curl` subprocess that is not always installed (docs/sharing.md).
            stream, _ = open_location(url)
            with stream:
                for sample in group_by_keys(tar_file_expander(iter([{"url": url, "stream": stream}]))):
                    if pos % k == j:
                        yield sample
                    pos += 1
        except Exception as e:  # tarfile, IO and fsspec errors alike: name the shard and the fix
            raise ShardError(f"{url}: cannot read the shard mid-epoch ({type(e).__name__}: {e}); run "
                             f"`python -m augment verify` on the set") from None
        if counts and pos != counts[s]:
            raise ShardError(f"{url}: holds {pos} readable samples, the manifest says {counts[s]}; the shard "
                             f"is damaged: run `python -m augment verify` on the set and re-render or re-fetch it")


def _shuffled(it: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer of ``size`` items (one pass; drained at the end)."""
    buf: list = []
    for x in it:
        if len(buf) < size:
            buf.append(x)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = x
    rng.shuffle(buf)
    yield from buf


def _stack(images: list[torch.Tensor], in_worker: bool) -> torch.Tensor:
    """Stack a batch; in a worker, straight into shared memory, so that sending it to the main
    process costs no second copy (what DataLoader's default collate does for map-style batches)."""
    if not in_worker:
        return torch.stack(images)
    n = len(images) * images[0].numel()
    out = images[0].new(images[0].untyped_storage()._new_shared(n)).view(len(images), *images[0].shape)
    return torch.stack(images, out=out)


class ShardStream(IterableDataset):
    """Yields ``(images uint8 N x C x H x W, indices int64 N)`` batches for one rank and epoch."""

    def __init__(self, spec: StreamSpec, transform: Transform | None, epoch: int = 0):
        super().__init__()
        self.spec, self.transform, self.epoch, self.skip = spec, transform, epoch, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch, and how many of its first batches (on this rank) to leave out."""
        self.epoch, self.skip = epoch, skip

    def _samples(self, slot: int, n_slots: int, n_samples: int) -> Iterator[tuple[int, dict]]:
        """This slot's first ``n_samples`` (position, sample): passes over its pieces, each pass in a
        new seeded shard order and shuffle; a slot with fewer samples than its quota starts again."""
        s = self.spec
        counts = s.counts or (1,) * len(s.urls)
        pieces = plan_epoch(counts, s.seed, self.epoch, n_slots)[slot]
        pos, npass = 0, 0
        while pos < n_samples:
            rng = random.Random(_mix(s.seed, self.epoch, slot, npass, 0x5EED))
            order = list(pieces)
            rng.shuffle(order)
            before = pos
            for sample in _shuffled(_read_piece_samples(s.urls, s.counts, order), s.shuffle_buffer, rng):
                yield pos, sample
                pos += 1
                if pos >= n_samples:
                    return
            if pos == before:
                raise ShardError(f"{s.urls[pieces[0][0]]}: no samples with .{s.image_ext} in this slot's "
                                 f"shards; check the set with `python -m augment verify`")
            npass += 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s = self.spec
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # After skipping k batches, worker w plays role (w + k) % workers so that the round-robin
        # order of the remaining batches continues exactly where the skipped prefix stopped.
        role = (worker + self.skip) % workers
        slot, n_slots = s.rank * workers + role, s.world_size * workers
        n_batches = worker_share(s.batches_per_rank, role, workers)
        done = skipped_per_role(min(self.skip, s.batches_per_rank), role, workers)
        slot_seed = _mix(s.seed, self.epoch, s.rank, role)
        ext, how, transform, bs = s.image_ext, s.decode, self.transform, s.batch_size
        batch: list[tuple[torch.Tensor, int]] = []
        for pos, sample in self._samples(slot, n_slots, n_batches * bs):
            if pos < done * bs:
                continue        # skipped without decoding; every sample's randomness is its own
            try:
                img = decode_image(sample[ext], how)
            except Exception as e:  # a damaged image: name its shard and key
                raise ShardError(f"{sample.get('__url__', '?')}: sample {sample.get('__key__')} cannot be "
                                 f"decoded ({type(e).__name__}: {str(e)[:120]}); run `python -m augment verify` "
                                 f"on the set") from None
            if transform is not None:
                # One generator per sample position: a resumed epoch augments exactly like the original.
                img = transform(img, torch.Generator().manual_seed(_sample_seed(slot_seed, pos)))
            batch.append((img, int(sample["__key__"])))
            if len(batch) == bs:
                yield (_stack([i for i, _ in batch], in_worker=info is not None),
                       torch.tensor([k for _, k in batch], dtype=torch.int64))
                batch = []


class EpochBatches:
    """One epoch of a ShardLoader: iterable once per call, with ``len()``, and worker errors turned
    into one-line ``click.ClickException`` messages naming the shard."""

    def __init__(self, loader: DataLoader, length: int):
        self.loader, self.length = loader, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        try:
            yield from self.loader
        except ShardError as e:
            # From a worker, the message is "Caught ShardError in DataLoader worker ... Traceback ...":
            # keep the original one-line message (its last line).
            last = [ln for ln in str(e).strip().splitlines() if ln.strip()][-1]
            raise click.ClickException(last.split("ShardError: ", 1)[-1]) from None


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

    def epoch(self, epoch: int, skip: int = 0) -> EpochBatches:
        """Batches of ``epoch`` on this rank; ``skip`` leaves out the first ones (exact mid-epoch resume)."""
        self.stream.set_epoch(epoch, skip)
        # Workers are not persistent: each epoch's workers pickle the stream with its new epoch.
        dl = DataLoader(self.stream, batch_size=None, num_workers=self.workers,
                        pin_memory=self.pin_memory, prefetch_factor=4 if self.workers else None)
        return EpochBatches(dl, max(0, self.batches_per_epoch - skip))


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
                      decode=decode, image_ext=m.image_format,
                      counts=tuple(e.count for e in m.shards), firsts=tuple(e.first for e in m.shards))
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
        return out                  # a view: the batch's torch.stack makes the only copy

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
