"""One loader for every trainer: a shard set streamed through multi-worker DataLoader pipelines.

Stages of one (rank, worker) slot, in order (plain generators, one tuple per sample)::

    1. plan      pieces of shards for this slot, balanced by the manifest's counts  (plan_epoch)
    2. read      tar members -> (url, key, image bytes) per sample, a lean tar reader (tar_samples)
    3. shuffle   a buffer of ``shuffle_buffer`` samples, seeded per (seed, epoch, slot, pass)
    4. quota     stop after this slot's share of the rank's fixed number of batches
    5. decode    torchvision.io.decode_jpeg; PNG through Pillow (decode_image)
    6. augment   the method's native augmentation, drawn per batch position (CropFlip) or per sample
    7. batch     written in place into a preallocated (shared-memory) uint8 batch; ``prepare()``
                 scales to (-1, 1) on the device

Equal batches on every rank by construction. webdataset's DDP epochs hang when ranks receive
different numbers of batches from uneven shards, so the epoch length is not "whatever the shards
hold" but a number fixed up front from the manifest::

    batches_per_rank = count // (world_size * batch_size)

Workers of a rank share those batches round-robin (shares differ by at most one). A slot whose pieces
hold fewer samples than its quota starts a second pass; one with more leaves some out. The price,
documented in docs/training.md: with uneven shards a few samples are seen twice in an epoch and as
many are not seen, and the final partial batch is dropped.

Order is a pure function of (seed, epoch, world size, workers): the plan, every shuffle and every
batch's augmentation draw from generators seeded by those numbers, and a DataLoader over
IterableDatasets yields worker batches in a fixed round-robin. That also gives exact mid-epoch
resume: ``loader.epoch(e, skip=k)`` yields batches k, k+1, ... of epoch e, identical to the original.

Batches leave the workers as uint8 (4x less inter-process traffic than float). Speed notes and
measurements: docs/training.md, *Throughput*.
"""
from __future__ import annotations

import gzip
import io
import math
import multiprocessing
import os
import random
import re
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, NamedTuple, Sequence

import click
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
# Imported here, not on first decode: DataLoader workers are forked each epoch and would each pay
# the import (about a CPU second) again.
from torchvision.io import ImageReadMode, decode_image as tv_decode, decode_jpeg

from augment.manifest import Manifest, open_location, read_manifest

# A native augmentation: (uint8 C x H x W tensor, generator) -> uint8 tensor of the method's input size.
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike ``hash()``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0]
               >> 1)


PNG_MAGIC = b"\x89PNG"
JPEG_MAGIC = b"\xff\xd8"


def _sample_seed(slot_seed: int, pos: int) -> int:
    """Seed of one sample's augmentation: cheap (called per sample), distinct per position."""
    return (slot_seed ^ (pos * 0x9E3779B97F4A7C15)) & 0x7FFFFFFFFFFFFFFF


# --------------------------------------------------------------------------- tar reading

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR = (b"0", b"\0", b"7")          # regular file, old-style regular file, contiguous file
_POSIX_MAGIC = b"ustar\x0000"
# webdataset's key/extension split (key = path up to the first dot of the base name) and meta files.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")
SKIPPED = object()   # stands for the payload of a sample outside the reader's piece


class TarFormatError(ValueError):
    """A tar construct this reader does not handle, or data cut short."""


def _number(field: bytes) -> int:
    """A tar numeric field: NUL/space-terminated octal, or GNU base-256 (high bit set)."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big") - (1 << (8 * len(field) - 8) if field[0] & 0x40 else 0)
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _header(block: bytes) -> tuple[str, int, bytes] | None:
    """(name, size, type flag) of a 512-byte header, or None when it is not a valid header (the
    checksum fails, as in a damaged block; Python's tarfile then also ends the archive)."""
    try:
        chk = _number(block[148:156])
        size = _number(block[124:136])
    except ValueError:
        return None
    plain = sum(block) - sum(block[148:156]) + 256          # the checksum field counts as 8 spaces
    if chk != plain and chk != plain - 256 * sum(b >= 128 for b in block[:148] + block[156:]):
        return None                                        # second form: signed-char sums (old tars)
    kind = block[156:157]
    name = block[:100].split(b"\0", 1)[0]
    if block[257:265] == _POSIX_MAGIC and block[345] != 0:
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    return name.decode("utf-8", "surrogateescape"), size, kind


def _pax(data: bytes) -> dict[str, str]:
    """Records ``"<len> key=value\\n"`` of a pax extended header."""
    out, i = {}, 0
    while i < len(data) and data[i] not in (0, 10):
        sp = data.index(b" ", i)
        n = int(data[i:sp])
        key, _, value = data[sp + 1:i + n - 1].partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        i += n
    return out


class _Reader:
    """Exact reads and forward skips on a binary stream (seeks where the stream can)."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.readinto = getattr(f, "readinto", None) or self._readinto
        try:
            self.seekable = f.seekable()
        except (AttributeError, OSError):
            self.seekable = False

    def read(self, n: int) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.readinto(view[got:])
            if not k:
                raise TarFormatError(f"unexpected end of data ({got} of {n} bytes)")
            got += k
        return buf

    def _readinto(self, view: memoryview) -> int:
        data = self.f.read(len(view))
        view[:len(data)] = data
        return len(data)

    def skip(self, n: int) -> None:
        if self.seekable and n > _BLOCK:
            self.f.seek(n, os.SEEK_CUR)
            return
        while n > 0:
            k = len(self.f.read(min(n, 1 << 20)))
            if not k:
                raise TarFormatError("unexpected end of data")
            n -= k


def tar_members(f: BinaryIO) -> Iterator[tuple[_Reader, str, int]]:
    """Regular members of a tar stream as ``(reader, name, size)``, the stream at the member's data.

    The caller reads or skips exactly ``size`` bytes through ``reader`` before the next member. Reads
    ustar, GNU long names and pax headers (path, size); other member types are skipped. Parsing the
    512-byte headers here, instead of through tarfile, costs a few microseconds per member.
    """
    r = _Reader(f)
    first = r.f.read(_BLOCK)
    if first[:2] == b"\x1f\x8b":                     # a gzipped tar: stream through gzip
        r = _Reader(gzip.GzipFile(fileobj=_Prepend(first, f)))
        first = r.f.read(_BLOCK)
    glob: dict[str, str] = {}
    local: dict[str, str] = {}
    block = first
    while len(block) == _BLOCK and block != _ZERO_BLOCK:
        head = _header(block)
        if head is None:
            return
        name, size, kind = head
        if kind in (b"x", b"g", b"L", b"K"):
            data = bytes(r.read(size))
            r.skip(-size % _BLOCK)
            if kind == b"L":
                local["path"] = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind != b"K":
                (local if kind == b"x" else glob).update(_pax(data))
        else:
            meta = {**glob, **local}
            local = {}
            if any(k.startswith("GNU.sparse") for k in meta) or kind == b"S":
                raise TarFormatError(f"{name}: sparse members are not supported")
            name, size = meta.get("path", name), int(meta.get("size", size))
            if kind in _REGULAR and not name.endswith("/"):
                yield r, name, size
            else:
                r.skip(size)
            r.skip(-size % _BLOCK)
        block = r.f.read(_BLOCK)


class _Prepend(io.RawIOBase):
    """A stream with bytes already read put back in front (to re-read a sniffed header)."""

    def __init__(self, head: bytes, f: BinaryIO):
        self.head, self.f = head, f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n], self.head = self.head[:n], self.head[n:]
            return n
        data = self.f.read(len(b))
        b[:len(data)] = data
        return len(data)


def tar_samples(f: BinaryIO, ext: str, k: int = 1, j: int = 0) -> Iterator[tuple[str, object]]:
    """``(key, payload)`` for every sample of a tar stream, grouped by key as webdataset does.

    ``payload`` is the ``ext`` member's bytes (a bytearray), None if the sample has none, and
    ``SKIPPED`` for samples whose index in the stream is not ``j`` modulo ``k``: their members are
    skipped, not read.
    """
    key, data, exts, index, keep = None, None, set(), -1, False
    for r, name, size in tar_members(f):
        m = _KEY_EXT.match(name) if not _META.match(name) else None
        if m is None:
            r.skip(size)
            continue
        base, suffix = m.group(1), m.group(2).lower()
        if base != key:
            if key is not None:
                yield key, data if keep else SKIPPED
            key, data, exts, index = base, None, set(), index + 1
            keep = index % k == j
        if suffix in exts:
            raise TarFormatError(f"{name}: duplicate file name in the tar file")
        exts.add(suffix)
        if keep and suffix == ext:
            data = r.read(size)
        else:
            r.skip(size)
    if key is not None:
        yield key, data if keep else SKIPPED


# --------------------------------------------------------------------------- decoding


def decode_image(data: bytes | bytearray, how: str = "torchvision") -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 RGB tensor C x H x W (its memory is H x W x C: a permuted view).

    ``torchvision`` (the default, faster than pillow-simd on JPEG: tests/bench/loader.py) decodes
    JPEG with ``decode_jpeg``; PNG goes through Pillow, because torchvision 0.29's libpng path crashes
    the process (segfault) on a damaged PNG instead of raising. A bytearray is decoded without a copy.
    """
    if how == "torchvision" and not data.startswith(PNG_MAGIC):
        buf = torch.frombuffer(data if isinstance(data, bytearray) else bytearray(data), dtype=torch.uint8)
        if data.startswith(JPEG_MAGIC):
            return decode_jpeg(buf, mode=ImageReadMode.RGB)
        return tv_decode(buf, mode=ImageReadMode.RGB)
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


def _read_pieces(urls: Sequence[str], counts: Sequence[int], pieces: Sequence[Piece],
                 ext: str) -> Iterator[tuple[str, str, object]]:
    """``(url, key, image bytes)`` of the samples of ``pieces`` in order; a tar error, or a shard that
    ends before the manifest's count (a damaged header ends a tar archive), names the shard."""
    for s, k, j in pieces:
        url, n = urls[s], 0
        try:
            # open_location (local, http(s) via urllib, fsspec) rather than webdataset's gopen, which
            # streams http(s) through a `curl` subprocess that is not always installed (docs/sharing.md).
            stream, _ = open_location(url)
            with stream:
                for key, data in tar_samples(stream, ext, k, j):
                    n += 1
                    if data is not SKIPPED:
                        yield url, key, data
        except Exception as e:  # tar, IO and fsspec errors alike: name the shard and the fix
            raise ShardError(f"{url}: cannot read the shard mid-epoch ({type(e).__name__}: {e}); run "
                             f"`python -m augment verify` on the set") from None
        if counts and n != counts[s]:
            raise ShardError(f"{url}: holds {n} readable samples, the manifest says {counts[s]}; the shard "
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


def _new_batch(shape: tuple[int, ...], shared: bool) -> torch.Tensor:
    """An uninitialised uint8 batch; in a worker, in shared memory, so that sending it to the main
    process costs no copy (what DataLoader's default collate does for map-style batches)."""
    if not shared:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape)


def _copy_chw(src: torch.Tensor, out: torch.Tensor, flip: bool = False) -> None:
    """``out[:] = src``, mirrored left-right if ``flip``. Decoders return C x H x W views of H x W x C
    memory; OpenCV's split de-interleaves such a view ~10x faster than torch's strided copy."""
    if src.shape != out.shape:
        raise ValueError(f"image of shape {tuple(src.shape)} in a batch of {tuple(out.shape)} images")
    if (src.dtype == torch.uint8 and src.shape[0] == 3 and src.stride(0) == 1 and src.stride(2) == 3
            and out.is_contiguous()):
        planes = list(out.numpy())
        got = cv2.split(src.permute(1, 2, 0).numpy(), planes)
        if got[0] is not planes[0]:                  # OpenCV allocated new planes: copy them over
            np.copyto(out.numpy(), np.stack(got))
        if flip:
            for p in planes:
                cv2.flip(p, 1, p)
        return
    out.copy_(src.flip(-1) if flip else src)


class CropFlip:
    """A random (or centred) ``size`` crop with an optional horizontal flip.

    Called as a Transform ``(img, generator) -> tensor`` it draws from the generator; the loader instead
    draws a whole batch's offsets at once (``draw``) and crops each sample straight into its batch
    slot (``into``), saving a generator and two copies per sample.
    """

    def __init__(self, size: int, at_random: bool = True, flip: bool = True):
        self.size, self.at_random, self.flip = size, at_random, flip

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``(n, 3)`` uniforms in [0, 1): vertical offset, horizontal offset and flip of n samples."""
        return rng.random((n, 3)) if self.at_random else np.ones((n, 3))

    def into(self, img: torch.Tensor, u: Sequence[float], out: torch.Tensor) -> None:
        """Write the crop of ``img`` (C x H x W) chosen by ``u`` (a row of ``draw``) into ``out``."""
        _, h, w = img.shape
        s = self.size
        if h < s or w < s:
            raise ValueError(f"patch {h}x{w} is smaller than the {s} crop")
        if self.at_random:
            y, x = int(u[0] * (h - s + 1)), int(u[1] * (w - s + 1))
        else:
            y, x = (h - s) // 2, (w - s) // 2
        _copy_chw(img[:, y:y + s, x:x + s], out, flip=self.flip and u[2] < 0.5)

    def __call__(self, img: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(3, generator=g).tolist() if self.at_random else [1.0] * 3
        out = torch.empty((img.shape[0], self.size, self.size), dtype=img.dtype)
        self.into(img, u, out)
        return out


class SlotRef(NamedTuple):
    """What a worker sends for a batch written into the shared ring: which worker, which slot."""
    worker: int
    slot: int


class BatchRing:
    """Per-worker rings of shared-memory batch slots, reused across batches.

    A fresh shared-memory segment per batch (what DataLoader does with a returned tensor) costs its
    page faults on every batch, about a quarter of a JPEG decode per sample on the machine measured
    (docs/training.md). Here each worker writes into its own ``slots`` preallocated slots in turn and
    sends only a ``SlotRef``; the main process copies the batch out (``take``) and frees the slot. A
    worker has at most ``prefetch + 1`` batches out at once, so ``slots = prefetch + 2`` never blocks.
    """

    def __init__(self, workers: int, slots: int, batch_size: int, shape: tuple[int, ...], pin: bool = False):
        self.images = _new_batch((workers, slots, batch_size, *shape), shared=True)
        self.keys = torch.zeros((workers, slots, batch_size), dtype=torch.int64).share_memory_()
        self.free = [multiprocessing.get_context().Semaphore(slots) for _ in range(workers)]
        self.slots, self.pin, self.count = slots, pin, 0

    def acquire(self, worker: int) -> int:
        """In a worker: the next slot to fill (this process's count of slots taken, modulo ``slots``)."""
        if not self.free[worker].acquire(timeout=RING_TIMEOUT_S):
            raise RuntimeError(f"loader worker {worker}: no free batch slot after {RING_TIMEOUT_S} s; "
                               f"the main process stopped taking batches")
        slot, self.count = self.count % self.slots, self.count + 1
        return slot

    def take(self, ref: SlotRef) -> tuple[torch.Tensor, torch.Tensor]:
        """In the main process: a private copy of the batch in ``ref`` (pinned on request); frees the slot."""
        src = self.images[ref.worker, ref.slot]
        images = torch.empty(src.shape, dtype=src.dtype, pin_memory=self.pin).copy_(src)
        keys = self.keys[ref.worker, ref.slot].clone()
        self.free[ref.worker].release()
        return images, keys


RING_TIMEOUT_S = 600


class _Batcher:
    """Decode, augment and write each sample into its slot of a preallocated batch."""

    def __init__(self, transform: Transform | None, spec: StreamSpec, slot_seed: int, shared: bool,
                 ring: BatchRing | None = None, worker: int = 0):
        self.t, self.bs, self.seed, self.shared = transform, spec.batch_size, slot_seed, shared
        self.ext, self.how, self.ring, self.worker = spec.image_ext, spec.decode, ring, worker
        self.batched = isinstance(transform, CropFlip)
        self.images, self.keys, self.u, self.slot = torch.empty(0), [], np.empty(0), 0

    def _decode(self, url: str, key: str, data) -> torch.Tensor:
        if data is None:
            raise ShardError(f"{url}: sample {key} has no .{self.ext} member; run `python -m augment verify` "
                             f"on the set")
        try:
            return decode_image(data, self.how)
        except Exception as e:  # a damaged image: name its shard and key
            raise ShardError(f"{url}: sample {key} cannot be decoded ({type(e).__name__}: {str(e)[:120]}); "
                             f"run `python -m augment verify` on the set") from None

    def _start(self, shape: tuple[int, ...]) -> None:
        self.keys = []
        if self.ring is not None:
            self.slot = self.ring.acquire(self.worker)
            self.images = self.ring.images[self.worker, self.slot]
        else:
            self.images = _new_batch((self.bs, *shape), self.shared)

    def add(self, pos: int, url: str, key: str, data) -> tuple[torch.Tensor, torch.Tensor] | SlotRef | None:
        """Add the sample at stream position ``pos``; returns the batch it completes, if it does."""
        i = pos % self.bs
        img = self._decode(url, key, data)
        if self.batched:
            if i == 0:
                # One draw per batch, seeded by the batch's position: a resumed epoch augments exactly
                # like the original, and no generator is built per sample.
                self.u = self.t.draw(np.random.default_rng([self.seed, pos // self.bs]), self.bs)
                self._start((img.shape[0], self.t.size, self.t.size))
            self.t.into(img, self.u[i], self.images[i])
        else:
            if self.t is not None:      # any other Transform: one generator per sample position
                img = self.t(img, torch.Generator().manual_seed(_sample_seed(self.seed, pos)))
            if i == 0:
                self._start(tuple(img.shape))
            _copy_chw(img, self.images[i])
        self.keys.append(int(key))
        if i < self.bs - 1:
            return None
        keys = torch.tensor(self.keys, dtype=torch.int64)
        if self.ring is None:
            return self.images, keys
        self.ring.keys[self.worker, self.slot].copy_(keys)
        return SlotRef(self.worker, self.slot)


class ShardStream(IterableDataset):
    """Yields ``(images uint8 N x C x H x W, indices int64 N)`` batches for one rank and epoch."""

    def __init__(self, spec: StreamSpec, transform: Transform | None, epoch: int = 0):
        super().__init__()
        self.spec, self.transform, self.epoch, self.skip = spec, transform, epoch, 0
        self.ring: BatchRing | None = None   # set by ShardLoader.epoch: workers then yield SlotRefs

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch, and how many of its first batches (on this rank) to leave out."""
        self.epoch, self.skip = epoch, skip

    def _samples(self, slot: int, n_slots: int, n_samples: int) -> Iterator[tuple[int, tuple]]:
        """This slot's first ``n_samples`` (position, (url, key, bytes)): passes over its pieces, each
        pass in a new seeded shard order and shuffle; a slot with fewer samples than its quota starts
        again."""
        s = self.spec
        counts = s.counts or (1,) * len(s.urls)
        pieces = plan_epoch(counts, s.seed, self.epoch, n_slots)[slot]
        pos, npass = 0, 0
        while pos < n_samples:
            rng = random.Random(_mix(s.seed, self.epoch, slot, npass, 0x5EED))
            order = list(pieces)
            rng.shuffle(order)
            before = pos
            for sample in _shuffled(_read_pieces(s.urls, s.counts, order, s.image_ext), s.shuffle_buffer, rng):
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
        done = skipped_per_role(min(self.skip, s.batches_per_rank), role, workers) * s.batch_size
        ring = self.ring if info is not None else None
        batcher = _Batcher(self.transform, s, _mix(s.seed, self.epoch, s.rank, role), shared=info is not None,
                           ring=ring, worker=worker)
        for pos, (url, key, data) in self._samples(slot, n_slots, n_batches * s.batch_size):
            if pos < done:
                continue        # skipped without decoding; every batch's randomness is its own
            batch = batcher.add(pos, url, key, data)
            if batch is not None:
                yield batch


class EpochBatches:
    """One epoch of a ShardLoader: iterable once per call, with ``len()``, and worker errors turned
    into one-line ``click.ClickException`` messages naming the shard."""

    def __init__(self, loader: DataLoader, length: int, ring: BatchRing | None = None):
        self.loader, self.length, self.ring = loader, length, ring

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        try:
            for batch in self.loader:
                yield self.ring.take(batch) if isinstance(batch, SlotRef) else batch
        except ShardError as e:
            # From a worker, the message is "Caught ShardError in DataLoader worker ... Traceback ...":
            # keep the original one-line message (its last line).
            last = [ln for ln in str(e).strip().splitlines() if ln.strip()][-1]
            raise click.ClickException(last.split("ShardError: ", 1)[-1]) from None


def _worker_init(_: int) -> None:
    """One thread per worker (torch and OpenCV): W workers then use W cores instead of fighting."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


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

    def _ring(self) -> BatchRing | None:
        """A fresh ring for this epoch's workers, when the batch shape is known before decoding."""
        t, s = self.stream.transform, self.stream.spec
        shape = (3, t.size, t.size) if isinstance(t, CropFlip) else (3, self.manifest.size, self.manifest.size)
        if not self.workers or not (t is None or isinstance(t, CropFlip)):
            return None
        return BatchRing(self.workers, PREFETCH + 2, s.batch_size, shape, pin=self.pin)

    @property
    def pin(self) -> bool:
        """Pinned memory only helps (and only works) when batches go to a GPU."""
        return self.pin_memory and torch.cuda.is_available()

    def epoch(self, epoch: int, skip: int = 0) -> EpochBatches:
        """Batches of ``epoch`` on this rank; ``skip`` leaves out the first ones (exact mid-epoch resume)."""
        self.stream.set_epoch(epoch, skip)
        self.stream.ring = ring = self._ring()
        # Workers are not persistent: each epoch's workers get the stream with its new epoch and ring.
        dl = DataLoader(self.stream, batch_size=None, num_workers=self.workers,
                        pin_memory=self.pin and ring is None, prefetch_factor=PREFETCH if self.workers else None,
                        worker_init_fn=_worker_init if self.workers else None)
        return EpochBatches(dl, max(0, self.batches_per_epoch - skip), ring)


PREFETCH = 2   # batches each worker prepares ahead (DataLoader's prefetch_factor)


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


def random_crop_flip(size: int, flip: bool = True) -> CropFlip:
    """RotNet / BiGAN native augmentation: a non-scaled random ``size`` crop and a horizontal flip."""
    return CropFlip(size, at_random=True, flip=flip)


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


def center_crop(size: int) -> CropFlip:
    """Deterministic centre crop (DeepCluster's feature pass, evaluation); the generator is unused."""
    return CropFlip(size, at_random=False, flip=False)
