"""Shuffle: one slot's stream of samples, in seeded passes over its pieces through a shuffle buffer.

With per-sample multiplicities (DeepCluster's uniform-over-clusters sampling), a sample drawn m times
enters the buffer m times (the copies share one bytes object) and each copy is augmented on its own.
"""
from __future__ import annotations

import itertools
import random
from typing import Iterator, Sequence

import numpy as np

from augment.seeds import mix
from train.loader.plan import Piece
from train.loader.read import ShardError, read_pieces


def shuffled(it: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer of ``size`` items (one pass; drained at the end); ``size`` 0 keeps the order."""
    if size <= 0:
        yield from it
        return
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


def repeated(samples: Iterator[tuple[str, str, object]], mult: np.ndarray | None) -> Iterator:
    """Each sample ``mult[index]`` times (once without multiplicities; index = the sample's key)."""
    if mult is None:
        yield from samples
        return
    for sample in samples:
        yield from itertools.repeat(sample, int(mult[int(sample[1])]))


def slot_samples(spec, epoch: int, pieces: Sequence[Piece], slot: int, limit: int | None,
                 mult: np.ndarray | None) -> Iterator[tuple[int, tuple]]:
    """``(position, (url, key, bytes))`` of one slot: passes over its pieces, each in a new seeded shard
    order and shuffle, until ``limit`` draws (a slot with fewer draws than its quota starts again).
    ``limit`` None: exactly one pass in shard order, unshuffled (DeepCluster's feature pass)."""
    pos, npass = 0, 0
    while limit is None or pos < limit:
        rng = random.Random(mix(spec.seed, epoch, slot, npass, 0x5EED))
        order = list(pieces)
        if limit is not None:
            rng.shuffle(order)
        before = pos
        reads = read_pieces(spec.urls, spec.counts, order, spec.image_ext, spec.digests)
        for sample in shuffled(repeated(reads, mult), spec.shuffle_buffer if limit is not None else 0, rng):
            yield pos, sample
            pos += 1
            if limit is not None and pos >= limit:
                return
        if limit is None:
            return
        if pos == before:
            raise ShardError(f"{spec.urls[pieces[0][0]]}: no samples with .{spec.image_ext} in this slot's "
                             f"shards; check the set with `python -m augment verify`")
        npass += 1
