"""Batch: decode, augment and write each sample straight into its slot of a preallocated uint8 batch.

In a worker the batches live in a ``BatchRing`` of reused shared-memory slots and only a ``SlotRef``
crosses the process boundary. A transform that returns several views (SimCLR, DINO) fills one batch
per view. Batches leave as uint8 (4x less traffic than float).

With GPU decoding (``--decode-device cuda``) a ``Batcher`` in ``raw`` mode decodes nothing: it sends the
JPEG payloads with the batch's crop draws (a ``RawBatch``), and ``finish_raw`` decodes them in one nvJPEG
call on the GPU and crops there, with the same draws, so the batch order and the crops are the CPU path's.
"""
from __future__ import annotations

import math
import multiprocessing
from typing import NamedTuple

import numpy as np
import torch

from train.loader.decode import decode_image, decode_jpegs
from train.loader.read import ShardError
from train.loader.transform import CropFlip, Transform, copy_chw, sample_seed

RING_TIMEOUT_S = 600


def _new_batch(shape: tuple[int, ...], shared: bool) -> torch.Tensor:
    """An uninitialised uint8 batch; in a worker, in shared memory, so that sending it to the main
    process costs no copy (what DataLoader's default collate does for map-style batches)."""
    if not shared:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape)


class SlotRef(NamedTuple):
    """What a worker sends for a batch written into the shared ring: which worker, which slot, how many."""
    worker: int
    slot: int
    n: int


class RawBatch(NamedTuple):
    """An undecoded batch for the GPU: JPEG payloads, the batch's crop draws (None: no crop), keys, shard urls."""
    data: list
    u: np.ndarray | None
    keys: torch.Tensor
    urls: list[str]


def finish_raw(raw: RawBatch, transform: CropFlip | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a ``RawBatch`` on ``device`` in one call and crop it there: ``(uint8 N x C x H x W, keys)``."""
    try:
        images = decode_jpegs(raw.data, device)
    except ValueError as e:
        i, msg = e.args
        if i is None:
            raise ShardError(f"{raw.urls[0]}: a batch failed to decode on {device} ({msg}); train with "
                             f"--decode-device cpu") from None
        raise ShardError(f"{raw.urls[i]}: sample {int(raw.keys[i])} cannot be decoded ({msg}); run "
                         f"`python -m augment verify` on the set") from None
    if transform is None:
        return torch.stack(images), raw.keys
    out = torch.empty((len(images), images[0].shape[0], transform.size, transform.size), dtype=torch.uint8,
                      device=device)
    for img, u, slot in zip(images, raw.u, out):
        transform.into(img, u, slot)
    return out, raw.keys


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
        src = src[:ref.n]
        images = torch.empty(src.shape, dtype=src.dtype, pin_memory=self.pin).copy_(src)
        keys = self.keys[ref.worker, ref.slot, :ref.n].clone()
        self.free[ref.worker].release()
        return images, keys




class Batcher:
    """Decode, augment and write each sample into its slot of a preallocated batch."""

    def __init__(self, transform: Transform | None, batch_size: int, image_ext: str, decode: str,
                 slot_seed: int, shared: bool, ring: BatchRing | None = None, worker: int = 0, raw: bool = False):
        self.t, self.bs, self.seed, self.shared = transform, batch_size, slot_seed, shared
        self.ext, self.how, self.ring, self.worker = image_ext, decode, ring, worker
        self.batched, self.raw = isinstance(transform, CropFlip), raw
        self.images: list[torch.Tensor] = []
        self.keys: list[int] = []
        self.payloads: list = []
        self.urls: list[str] = []
        self.u, self.slot = np.empty(0), 0

    def _decode(self, url: str, key: str, data) -> torch.Tensor:
        if data is None:
            raise ShardError(f"{url}: sample {key} has no .{self.ext} member; run `python -m augment verify` "
                             f"on the set")
        try:
            return decode_image(data, self.how)
        except Exception as e:  # a damaged image: name its shard and key
            raise ShardError(f"{url}: sample {key} cannot be decoded ({type(e).__name__}: {str(e)[:120]}); "
                             f"run `python -m augment verify` on the set") from None

    def _start(self, shapes: list[tuple[int, ...]]) -> None:
        self.keys = []
        if self.ring is not None:
            self.slot = self.ring.acquire(self.worker)
            self.images = [self.ring.images[self.worker, self.slot]]
        else:
            self.images = [_new_batch((self.bs, *s), self.shared) for s in shapes]

    def _keep(self, i: int, pos: int, url: str, key: str, data) -> None:
        """Raw mode: keep the payload undecoded (and draw the batch's crops at its first sample)."""
        if data is None:
            raise ShardError(f"{url}: sample {key} has no .{self.ext} member; run `python -m augment verify` "
                             f"on the set")
        if i == 0:
            self.payloads, self.urls, self.keys = [], [], []
            self.u = self.t.draw(np.random.default_rng([self.seed, pos // self.bs]), self.bs) if self.batched \
                else None
        self.payloads.append(data)
        self.urls.append(url)

    def add(self, pos: int, url: str, key: str, data):
        """Add the sample at stream position ``pos``; returns the batch it completes, if it does."""
        i = pos % self.bs
        if self.raw:
            self._keep(i, pos, url, key, data)
            self.keys.append(int(key))
            return self.flush() if i == self.bs - 1 else None
        img = self._decode(url, key, data)
        if self.batched:
            if i == 0:
                # One draw per batch, seeded by the batch's position: a resumed epoch augments exactly
                # like the original, and no generator is built per sample.
                self.u = self.t.draw(np.random.default_rng([self.seed, pos // self.bs]), self.bs)
                self._start([(img.shape[0], self.t.size, self.t.size)])
            self.t.into(img, self.u[i], self.images[0][i])
        else:
            views = (img,)
            if self.t is not None:      # any other Transform: one generator per sample position
                out = self.t(img, torch.Generator().manual_seed(sample_seed(self.seed, pos)))
                views = tuple(out) if isinstance(out, (tuple, list)) else (out,)
            if i == 0:
                self._start([tuple(v.shape) for v in views])
            for v, batch in zip(views, self.images):
                copy_chw(v, batch[i])
        self.keys.append(int(key))
        return self.flush() if i == self.bs - 1 else None

    def flush(self):
        """The batch filled so far (all of it, or the partial last batch of a one-pass epoch)."""
        n = len(self.keys)
        if n == 0:
            return None
        keys = torch.tensor(self.keys, dtype=torch.int64)
        self.keys = []
        if self.raw:
            return RawBatch(self.payloads, None if self.u is None else self.u[:n].copy(), keys, self.urls)
        if self.ring is not None:
            self.ring.keys[self.worker, self.slot, :n].copy_(keys)
            return SlotRef(self.worker, self.slot, n)
        images = [b[:n] for b in self.images]
        return (images[0] if len(images) == 1 else images), keys
