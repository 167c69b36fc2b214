"""Stream: one rank's epoch of batches from a shard set, through a multi-worker DataLoader.

Order is a pure function of (seed, epoch, world size, workers): the plan, every shuffle and every
batch's augmentation draw from generators seeded by those numbers, and a DataLoader over
IterableDatasets yields worker batches in a fixed round-robin. That gives exact mid-epoch resume:
``loader.epoch(e, skip=k)`` yields batches k, k+1, ... of epoch e, identical to the original.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import click
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from augment.manifest import Manifest, read_manifest
from augment.seeds import mix
from train.loader.batch import Batcher, BatchRing, RawBatch, SlotRef, finish_raw
from train.loader.plan import piece_sizes, plan_epoch, skipped_per_role, worker_share
from train.loader.read import ShardError
from train.loader.shuffle import slot_samples
from train.loader.transform import CropFlip, Transform
from train.loader.worker import detach_worker

PREFETCH = 2   # batches each worker prepares ahead (DataLoader's prefetch_factor)


@dataclass(frozen=True)
class StreamSpec:
    """What a stream reads: the shards, their manifest counts and digests, and the batching."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    firsts: tuple[int, ...]
    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 2000
    decode: str = "torchvision"
    image_ext: str = "jpg"
    digests: tuple[str, ...] = ()   # per-shard sha256 checked as each shard streams; empty: not checked


class ShardStream(IterableDataset):
    """Yields ``(images uint8 N x C x H x W, indices int64 N)`` batches for one rank and epoch.

    ``once``: every sample exactly once, unshuffled, the last batch of each worker possibly short (a
    feature pass). Otherwise ``batches`` full batches for this rank, with multiplicities ``mult`` when set.
    """

    def __init__(self, spec: StreamSpec, transform: Transform | None):
        super().__init__()
        self.spec, self.transform = spec, transform
        self.epoch, self.skip, self.batches, self.once = 0, 0, 0, False
        self.mult: np.ndarray | None = None
        self.ring: BatchRing | None = None   # set per epoch: workers then yield SlotRefs
        self.raw = False                     # True: yield undecoded RawBatches (decoded on the GPU)

    def _slot(self) -> tuple[int, int, int, int]:
        """(worker, workers, role, slot): after skipping k batches worker w plays role (w + k) % workers,
        so the round-robin order of the remaining batches continues where the skipped prefix stopped."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        role = (worker + self.skip) % workers
        rank = 0 if self.once else self.spec.rank
        return worker, workers, role, rank * workers + role

    def __iter__(self) -> Iterator:
        s = self.spec
        worker, workers, role, slot = self._slot()
        n_slots = (1 if self.once else s.world_size) * workers
        mult = None if self.once else self.mult
        pieces = plan_epoch(s.counts, s.seed, self.epoch, n_slots, s.firsts, mult)[slot]
        in_worker = get_worker_info() is not None
        batcher = Batcher(self.transform, s.batch_size, s.image_ext, s.decode, mix(s.seed, self.epoch, s.rank, role),
                          shared=in_worker, ring=self.ring if in_worker else None, worker=worker, raw=self.raw)
        if self.once:
            for pos, (url, key, data) in slot_samples(s, self.epoch, pieces, slot, None, None):
                if (batch := batcher.add(pos, url, key, data)) is not None:
                    yield batch
            if (batch := batcher.flush()) is not None:
                yield batch
            return
        n_batches = worker_share(self.batches, role, workers)
        done = skipped_per_role(min(self.skip, self.batches), role, workers) * s.batch_size
        for pos, (url, key, data) in slot_samples(s, self.epoch, pieces, slot, n_batches * s.batch_size, mult):
            if pos < done:
                continue        # skipped without decoding; every batch's randomness is its own
            if (batch := batcher.add(pos, url, key, data)) is not None:
                yield batch


class EpochBatches:
    """One epoch of a loader: iterable once per call, with ``len()``, and worker errors turned
    into one-line ``click.ClickException`` messages naming the shard. ``finish`` decodes raw batches."""

    def __init__(self, loader: DataLoader, length: int, ring: BatchRing | None = None, finish=None):
        self.loader, self.length, self.ring, self.finish = loader, length, ring, finish

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        try:
            for batch in self.loader:
                if isinstance(batch, RawBatch):
                    yield self.finish(batch)
                else:
                    yield self.ring.take(batch) if isinstance(batch, SlotRef) else batch
        except ShardError as e:
            # From a worker, the message is "Caught ShardError in DataLoader worker ... Traceback ...":
            # keep the original one-line message (its last line).
            last = [ln for ln in str(e).strip().splitlines() if ln.strip()][-1]
            raise click.ClickException(last.split("ShardError: ", 1)[-1]) from None


def _worker_init(_: int) -> None:
    """One thread per worker (torch and OpenCV): W workers then use W cores instead of fighting; the worker
    dies with its parent and does not keep the folder lock (``train.loader.worker``)."""
    detach_worker()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


@dataclass
class ShardLoader:
    """A DataLoader over one shard set, re-seeded each epoch: ``for x, idx in loader.epoch(e)``."""

    manifest: Manifest
    stream: ShardStream
    workers: int
    pin_memory: bool = False
    decode_device: torch.device | None = None   # set by ``decode_on``: JPEG batches are decoded there

    @property
    def draws(self) -> int:
        """Samples per epoch over all ranks: the set's count, or the sum of the multiplicities."""
        return self.manifest.count if self.stream.mult is None else int(self.stream.mult.sum())

    @property
    def batches_per_epoch(self) -> int:
        s = self.stream.spec
        return self.draws // (s.world_size * s.batch_size)

    def set_multiplicities(self, mult: np.ndarray | None) -> None:
        """Draw sample ``i`` ``mult[i]`` times per epoch (None: once each); the epoch length follows."""
        if mult is not None and len(mult) != self.manifest.count:
            raise ValueError(f"{len(mult)} multiplicities for a set of {self.manifest.count} samples")
        self.stream.mult = mult

    def decode_on(self, device: torch.device) -> str:
        """Decode this loader's JPEG batches on ``device`` (a GPU, nvJPEG) from now on; or, where that cannot
        be, leave decoding on the CPU and return why (one clause)."""
        t = self.stream.transform
        if device.type != "cuda" or not torch.cuda.is_available():
            return "no CUDA device is visible here" if not torch.cuda.is_available() else \
                f"the run trains on {device}, not on a GPU"
        if self.manifest.image_format not in ("jpg", "jpeg"):
            return f"the set's patches are {self.manifest.image_format.upper()}, and nvJPEG decodes JPEG only"
        if not (t is None or isinstance(t, CropFlip)):
            return "this method's augmentation runs per sample on the CPU"
        self.decode_device = device
        return ""

    def _ring(self) -> BatchRing | None:
        """A fresh ring for this epoch's workers, when the batch shape is known before decoding."""
        t, s = self.stream.transform, self.stream.spec
        if not self.workers or not (t is None or isinstance(t, CropFlip)) or self.decode_device is not None:
            return None
        shape = (3, t.size, t.size) if isinstance(t, CropFlip) else (3, self.manifest.size, self.manifest.size)
        return BatchRing(self.workers, PREFETCH + 2, s.batch_size, shape, pin=self.pin)

    @property
    def pin(self) -> bool:
        """Pinned memory only helps (and only works) when batches go to a GPU."""
        return self.pin_memory and torch.cuda.is_available()

    def _batches(self, workers: int, once: bool, length: int) -> EpochBatches:
        self.stream.ring = ring = self._ring() if workers else None
        dev = self.decode_device
        self.stream.raw = dev is not None
        # Workers are not persistent: each epoch's workers get the stream with its new epoch and ring.
        dl = DataLoader(self.stream, batch_size=None, num_workers=workers,
                        pin_memory=self.pin and ring is None and dev is None,
                        prefetch_factor=PREFETCH if workers else None,
                        worker_init_fn=_worker_init if workers else None)
        finish = None if dev is None else (lambda raw: finish_raw(raw, self.stream.transform, dev))
        return EpochBatches(dl, length, ring, finish)

    def epoch(self, epoch: int, skip: int = 0) -> EpochBatches:
        """Batches of ``epoch`` on this rank; ``skip`` leaves out the first ones (exact mid-epoch resume)."""
        st = self.stream
        st.epoch, st.skip, st.once, st.batches = epoch, skip, False, self.batches_per_epoch
        if st.batches < 1:
            raise click.ClickException(f"{self.manifest.root}: {self.draws} draws make no batch of "
                                       f"{st.spec.batch_size} on each of {st.spec.world_size} rank(s); "
                                       f"lower --batch-size")
        return self._batches(self.workers, False, max(0, st.batches - skip))

    def once(self, epoch: int = 0) -> EpochBatches:
        """Every sample of the set exactly once (the same on every rank), unshuffled; short last batches."""
        st = self.stream
        st.epoch, st.skip, st.once = epoch, 0, True
        s, slots = st.spec, max(self.workers, 1)
        plan = plan_epoch(s.counts, s.seed, epoch, slots, s.firsts)
        sizes = [sum(piece_sizes(s.counts, s.firsts, pieces, None).values()) for pieces in plan]
        return self._batches(self.workers, True, sum(-(-n // s.batch_size) for n in sizes))


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
                shuffle_buffer: int = 2000, decode: str = "torchvision", sizes: Sequence[int] | None = None,
                pin_memory: bool = False, verify_stream: bool = True) -> ShardLoader:
    """Build the loader for a shard set (folder, manifest path or URL).

    ``sizes``: the patch sizes S this method accepts; another size is a clear error naming ``--size``.
    ``verify_stream``: hash every shard as it streams and stop on a mismatch with the manifest.
    """
    m = shards if isinstance(shards, Manifest) else read_manifest(shards)
    if sizes is not None and m.size not in sizes:
        want = " or ".join(str(s) for s in sizes)
        raise click.ClickException(f"{m.root}: patches are {m.size}x{m.size} but this method needs S = {want}; "
                                   f"render a set with `python -m augment render --size {sizes[0]}`")
    check_local_shards(m)
    if m.count // (world_size * batch_size) < 1:
        raise click.ClickException(f"{m.root}: {m.count} samples are fewer than one batch of {batch_size} "
                                   f"on each of {world_size} rank(s); lower --batch-size")
    spec = StreamSpec(urls=tuple(m.shard_urls), counts=tuple(e.count for e in m.shards),
                      firsts=tuple(e.first for e in m.shards), batch_size=batch_size, seed=seed, rank=rank,
                      world_size=world_size, shuffle_buffer=shuffle_buffer, decode=decode,
                      image_ext=m.image_format,
                      digests=tuple(e.sha256 for e in m.shards) if verify_stream else ())
    return ShardLoader(m, ShardStream(spec, transform), workers, pin_memory)


def with_transform(loader: ShardLoader, transform: Transform | None) -> ShardLoader:
    """The same set, seed and batching with another transform (e.g. centre crops to evaluate)."""
    return ShardLoader(loader.manifest, ShardStream(loader.stream.spec, transform), loader.workers,
                       loader.pin_memory)

