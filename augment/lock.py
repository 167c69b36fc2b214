"""One writer per folder: an exclusive lock file that names its holder (pid, host, start time).

Two commands writing into one folder at once (two renders, two fetches, two trainers with one
``--out``) would delete or overwrite each other's files. Each takes ``folder_lock`` first; the second
one stops with a single line naming the holder. The lock is ``fcntl.flock`` on the lock file, so the
kernel releases it when its process dies, even by SIGKILL: a lock file left by a dead process is
simply taken over. On filesystems without ``flock`` the file's content decides: a holder that is no
longer running on this host is taken over, any other is respected.

Usage::

    with folder_lock(os.path.join(out, ".render"), what=f"render into {out}") as lock:
        ...                      # lock.previous: the dead holder taken over, if any
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Iterator

import click

from augment.files import describe_os_error, pid_alive

LOCK_NAME = "lock"
RECORD_WAIT_TRIES = 20     # x 50 ms: how long a busy lock's record may take to be written
# flock is missing on some network and FUSE filesystems: these errors mean "no locks here", not "busy".
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock: what the lock file says."""

    pid: int
    host: str
    started: str
    what: str = ""

    def describe(self) -> str:
        doing = f" ({self.what})" if self.what else ""
        return f"process {self.pid} on {self.host}{doing}, since {self.started}"


@dataclass(frozen=True)
class Lock:
    """A held lock: its file, and the dead holder whose lock was taken over (None if there was none)."""

    path: str
    previous: Holder | None


# The fds of the locks this process holds. A forked child (a render's pool worker) gets copies of them,
# and a flock lives while any copy is open: a worker orphaned by a SIGKILL of its parent would keep the
# set locked under the dead parent's name. O_CLOEXEC does not help (fork is not exec), so every child
# closes its copies at once; closing a copy never unlocks the parent's.
_HELD: set[int] = set()


def _close_inherited() -> None:
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited)

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None) -> None:
    """In a forked worker (a render's pool, a trainer's DataLoader): ask Linux to SIGKILL this process when its
    parent dies (``PR_SET_PDEATHSIG``), so a kill of the parent alone leaves no worker writing for nobody, and
    exit at once if ``parent`` is already gone (it died before the request took effect). The worker's copies
    of the parent's locks were closed at fork (above). Elsewhere than Linux callers check the parent between
    units of work."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


class Busy(click.ClickException):
    """The folder is locked by a live process."""


def read_holder(path: str) -> Holder | None:
    """The holder recorded in a lock file, or None when it is absent, empty or unreadable."""
    try:
        with open(path) as f:
            d = json.load(f)
        return Holder(int(d["pid"]), str(d["host"]), str(d["started"]), str(d.get("what", "")))
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: another open file holds it; None: this filesystem has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in _NO_FLOCK:
            return None
        raise


def _held_by_record(holder: Holder | None) -> bool:
    """Without flock: the recorded holder counts while it runs (another host: assume it does)."""
    if holder is None:
        return False
    return holder.host != socket.gethostname() or pid_alive(holder.pid)


def _acquire(path: str) -> tuple[int, Holder | None] | Holder | None:
    """One attempt: (fd, previous holder) when taken; else the live holder (None if it is unknown)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        got = _try_flock(fd)
        previous = read_holder(path)
        if got is None:
            got = not _held_by_record(previous)
        if not got:
            # The holder writes its record right after it locks: give it a moment to appear.
            for _ in range(RECORD_WAIT_TRIES):
                if previous is not None:
                    break
                time.sleep(0.05)
                previous = read_holder(path)
            os.close(fd)
            return previous
        # A holder may have removed the file between our open and our flock: then we locked a file
        # nobody else will see; try again on the path's current file.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return _acquire(path)
        return fd, previous
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


@contextlib.contextmanager
def folder_lock(folder: str, what: str, name: str = LOCK_NAME) -> Iterator[Lock]:
    """Hold ``folder/name`` exclusively for the block (the folder is created if needed).

    ``what`` says what the holder is doing (``"render into shards/x"``); it appears in every message.
    A live holder: ``Busy`` (a ClickException, one line, exit 1) naming its pid, host and start time.
    A holder that is gone (killed, crashed): its lock is taken over and returned as ``lock.previous``.
    The lock file is removed on release.
    """
    path = os.path.join(folder, name)
    try:
        os.makedirs(folder, exist_ok=True)
        got = _acquire(path)
    except OSError as e:
        raise click.ClickException(f"{what}: cannot create {folder} ({describe_os_error(e)})") from None
    if not isinstance(got, tuple):
        who = got.describe() if got else "another process"
        raise Busy(f"{what}: {folder} is in use by {who}; wait for it to finish (or stop it), then run again")
    fd, previous = got
    me = Holder(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%S%z"), what)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me.__dict__, sort_keys=True) + "\n").encode(), 0)
    dead = previous if previous and previous.pid != me.pid else None
    _HELD.add(fd)
    try:
        yield Lock(path, dead)
    finally:
        _HELD.discard(fd)
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.remove(path)  # before unlocking: a waiter then re-opens the path, not this file
        os.close(fd)
