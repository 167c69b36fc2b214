"""What every DataLoader worker of a trainer does first: die with its parent and leave Ctrl-C to the parent.

A forked worker inherits the trainer's open file of ``OUT/.train/lock``; ``flock`` belongs to the open file,
not the process, so a worker alive after its parent was killed kept the folder locked (and a ``--resume``
was refused as "in use by process N", N dead). ``augment.lock`` closes every child's copies of its locks at
fork; here each worker also asks the kernel to kill it when its parent dies (``augment.lock.die_with_parent``).
SIGINT is ignored in workers: the parent handles Ctrl-C with one line, and the workers end when it shuts its
loaders down.
"""
from __future__ import annotations

import os
import signal

from augment.lock import die_with_parent

_parent: list[int] = []        # the trainer's pid, recorded when it takes its folder's lock


def mark_trainer() -> None:
    """Record this process as the trainer: the DataLoader workers it forks die with it."""
    _parent[:] = [os.getpid()]


def detach_worker() -> None:
    """Run first in every DataLoader worker: see the module docstring."""
    if _parent and os.getpid() == _parent[0]:
        return                  # not a worker (num_workers=0 calls nothing, but be safe)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(_parent[0] if _parent else None)


def worker_init(_: int) -> None:
    """``worker_init_fn`` for loaders that need nothing else."""
    detach_worker()
