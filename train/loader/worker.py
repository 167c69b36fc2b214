"""What every DataLoader worker of a trainer does first: die with its parent, drop the parent's folder lock
and leave Ctrl-C to the parent.

A forked worker inherits the trainer's open file of ``OUT/.train/lock``; ``flock`` belongs to the open file,
not the process, so a worker alive after its parent was killed kept the folder locked (and a ``--resume``
was refused as "in use by process N", N dead). Each worker therefore closes its copy at start and asks the
kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``). SIGINT is ignored in workers: the parent
handles Ctrl-C with one line, and the workers end when it shuts its loaders down.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
_held: set[str] = set()        # lock files the trainer holds: workers close their inherited copies
_parent: list[int] = []        # the trainer's pid, recorded when it takes its lock


def hold(path: str) -> None:
    """Record that this process holds the lock file ``path`` (its workers will not keep it)."""
    _held.add(os.path.realpath(path))
    _parent[:] = [os.getpid()]


def release(path: str) -> None:
    """Forget ``path`` (the lock was released)."""
    _held.discard(os.path.realpath(path))


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl: then nobody would send the signal.
    if _parent and os.getppid() != _parent[0]:
        os._exit(1)


def _close_held_locks() -> None:
    if not _held:
        return
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError, ValueError):
                if os.path.realpath(os.readlink(f"/proc/self/fd/{name}")) in _held:
                    os.close(int(name))


def detach_worker() -> None:
    """Run first in every DataLoader worker: see the module docstring."""
    if _parent and os.getpid() == _parent[0]:
        return                  # not a worker (num_workers=0 calls nothing, but be safe)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    _close_held_locks()


def worker_init(_: int) -> None:
    """``worker_init_fn`` for loaders that need nothing else."""
    detach_worker()
