"""Plan: which pieces of which shards each (rank, worker) slot reads in an epoch, and how many batches.

The epoch length is fixed before any data is read, from the manifest (webdataset's DDP epochs hang when
ranks get different batch counts from uneven shards): ``batches_per_rank = draws // (world * batch)``,
where ``draws`` is the number of samples, or the sum of per-sample multiplicities (DeepCluster).
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from augment.seeds import mix

# A piece of a shard: (shard index, k, j) = the samples whose position in the shard is j modulo k.
Piece = tuple[int, int, int]


def piece_sizes(counts: Sequence[int], firsts: Sequence[int], pieces: Sequence[Piece],
                mult: np.ndarray | None) -> dict[Piece, int]:
    """Draws in each piece: its samples, or the sum of their multiplicities."""
    if mult is None:
        return {p: len(range(p[2], counts[p[0]], p[1])) for p in pieces}
    return {p: int(mult[firsts[p[0]] + p[2]:firsts[p[0]] + counts[p[0]]:p[1]].sum()) for p in pieces}


def plan_epoch(counts: Sequence[int], seed: int, epoch: int, n_slots: int, firsts: Sequence[int] = (),
               mult: np.ndarray | None = None) -> list[list[Piece]]:
    """Pieces of shards read by each (rank, worker) slot in one epoch, balanced by draws.

    With fewer than four shards per slot, each shard is cut into k interleaved pieces (every k-th
    sample) so that there are at least four pieces per slot; pieces are dealt largest first to the
    least-loaded slot (a seeded permutation breaks ties), so uneven shards still give near-equal loads.
    Cutting costs reads, not decodes: a shard cut in k is read k times (by different slots).
    """
    k = -(-4 * n_slots // len(counts))
    pieces = [(s, k, j) for s in range(len(counts)) for j in range(k)]
    random.Random(mix(seed, epoch, 0x5A4D)).shuffle(pieces)
    size = piece_sizes(counts, firsts, pieces, mult)
    pieces.sort(key=lambda p: -size[p])            # stable: equal sizes keep the seeded order
    plan: list[list[Piece]] = [[] for _ in range(n_slots)]
    load = [0] * n_slots
    for p in pieces:
        i = min(range(n_slots), key=lambda i: (load[i], i))
        plan[i].append(p)
        load[i] += size[p]
    for i in range(n_slots):
        if load[i] == 0:                            # only for sets with fewer draws than slots
            plan[i] = [max(pieces, key=lambda p: size[p])]
    return plan


def worker_share(total: int, worker: int, workers: int) -> int:
    """Batches produced by ``worker`` out of ``total`` for its rank (shares differ by at most one)."""
    return total // workers + (1 if worker < total % workers else 0)


def skipped_per_role(skip: int, role: int, workers: int) -> int:
    """Batches of worker role ``role`` among the first ``skip`` of an epoch (batches are dealt
    round-robin, batch b from role b % workers)."""
    return skip // workers + (1 if role < skip % workers else 0)
