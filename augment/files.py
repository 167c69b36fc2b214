"""The one place for the file acts every command shares: atomic writes, digests and clear disk errors.

Every file this project writes (shards, manifests, checkpoints, logs' companions, caches, figures) goes
through ``atomic_write``: a temporary name beside the target, fsync, then ``os.replace``. A crash or a
full disk leaves the previous file intact and no temporary file behind. ``file_digest`` is the one
streamed sha256. ``describe_os_error`` turns an ``OSError`` into the one line a user needs.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from typing import IO, Iterator

TMP_MARK = ".partial-"   # temporary files are named <target>.partial-<pid>[suffix]


def temp_name(path: str, suffix: str = "") -> str:
    """The temporary name of ``path`` for this process (``suffix`` keeps an extension a writer needs)."""
    return f"{path}{TMP_MARK}{os.getpid()}{suffix}"


def describe_os_error(e: OSError, path: str = "", need: int | None = None) -> str:
    """One line for an OSError: what failed where, and what to do about it."""
    where = path or getattr(e, "filename", "") or ""
    folder = os.path.dirname(os.path.abspath(where)) if where else "."
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = None
        want = f"; about {need:,} bytes are needed" if need else ""
        have = f", {free:,} bytes free" if free is not None else ""
        return f"{folder}: no space left on the device{have}{want}; free some space or write elsewhere"
    if e.errno in (errno.EROFS,):
        return f"{where}: the filesystem is read-only; choose a writable folder"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{where}: permission denied; choose a folder you can write"
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and where:
        return f"{where}: a file stands where a folder is needed; choose another path"
    if e.errno == errno.ENOENT and where:
        return (f"{where}: cannot be created (its folder is missing and cannot be made there, as on a pseudo "
                f"filesystem like /proc); choose another path")
    return f"{where}: {e.strerror or e}"


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", suffix: str = "") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    On any error (a full disk included) the temporary file is removed and ``path`` keeps its old
    content. ``suffix`` is appended to the temporary name (e.g. ``.png`` for writers that infer the
    format from the name).
    """
    tmp = temp_name(path, suffix)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Like ``atomic_write``, for writers that take a file name (``torch.save``, h5py, PIL).

    Yields the temporary name; the writer fills it, then it is fsynced and renamed over ``path``.
    """
    tmp = temp_name(path, suffix)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (fsync + rename)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def bytes_digest(data: bytes) -> str:
    """sha256 (hex) of bytes in memory."""
    return hashlib.sha256(data).hexdigest()


def user_cache_dir(*parts: str) -> str:
    """This project's folder in the user cache: ``$XDG_CACHE_HOME`` (else ``~/.cache``)/single-image-ssl/parts."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "single-image-ssl", *parts)


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists (signal 0 probes without touching it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead for our purposes: it writes nothing any more
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def temp_names(folder: str) -> list[str]:
    """Names of the temporary files (``*.partial-PID*``, and older versions' ``*.partial``) in ``folder``."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [n for n in names if TMP_MARK in n or n.endswith(".partial")]


def remove_stale_temps(folder: str, locked: bool = False) -> list[str]:
    """Remove the stale ``*.partial-PID*`` files in ``folder``; returns what was removed.

    ``locked``: the caller holds the folder's lock, so no other writer can be at work in it and every
    temporary file is stale, whatever its PID says (a killed worker stays a zombie, "alive" to
    ``kill(pid, 0)``, until its parent is reaped; and PIDs are reused). Without the lock, only files
    whose process is gone are removed.
    """
    removed = []
    for name in temp_names(folder):
        head, mark, tail = name.rpartition(TMP_MARK)
        if not mark:  # a bare ``*.partial``: a fetch's resumable download, not a dead writer's file
            continue
        digits = "".join(c for c in tail.split(".", 1)[0] if c.isdigit())
        mine = digits and int(digits) == os.getpid()
        if locked or (digits and not mine and not pid_alive(int(digits))):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))
                removed.append(name)
    return removed
