"""Deterministic, atomic tar shards in the WebDataset layout.

Every byte of a shard is a function of its samples: members carry a fixed mtime, owner and mode, appear
in sample order with each sample's members adjacent, and the tar is written under a temporary name and
renamed only once complete (``augment.files.atomic_path``), so a crash never leaves a truncated ``.tar``
under a final name.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterable, Mapping

from augment.files import atomic_path

SHARD_NAME = "shard-{:06d}.tar"
# 2000-01-01T00:00:00Z: a fixed, non-zero mtime (some tools treat 0 as "unknown").
FIXED_MTIME = 946684800


def shard_name(index: int) -> str:
    """File name of shard ``index`` inside a set."""
    return SHARD_NAME.format(index)


def brace_pattern(names: list[str]) -> str | None:
    """The shards ``names`` as one webdataset brace pattern, ``shard-{000000..000049}.tar``, or None when
    they are not shards 0 … n-1 in order (a hand-made subset). timm's wds split is this plus ``|count``."""
    if not names or list(names) != [shard_name(i) for i in range(len(names))]:
        return None
    if len(names) == 1:
        return names[0]
    return SHARD_NAME.replace("{:06d}", "{{{:06d}..{:06d}}}").format(0, len(names) - 1)


def sample_key(index: int) -> str:
    """WebDataset key of global sample ``index``: digits only, never a dot (dots split keys)."""
    return f"{index:09d}"


@dataclass(frozen=True)
class ShardInfo:
    name: str
    first: int
    count: int
    bytes: int
    sha256: str

    def to_json(self) -> dict:
        return {"name": self.name, "first": self.first, "count": self.count,
                "bytes": self.bytes, "sha256": self.sha256}


BLOCK = 512
RECORD = 20 * BLOCK  # tar's record size: archives are padded to a multiple of it
_ZERO = bytes(BLOCK)


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of a regular file with this project's fixed metadata.

    Written by hand rather than by ``tarfile``: about ten times faster per member, and the bytes are
    pinned by this function, not by whichever Python version renders (the format is in
    docs/shard-format.md; a test checks it equals ``tarfile``'s USTAR output).
    """
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"member name {name!r} is longer than ustar's 100 bytes")
    head = b"".join([
        raw.ljust(100, b"\0"),
        b"0000644\0", b"0000000\0", b"0000000\0",        # mode, uid, gid
        b"%011o\0" % size, b"%011o\0" % FIXED_MTIME,
        b"        ",                                      # checksum, counted as spaces
        b"0",                                             # regular file
        bytes(100),                                       # link name
        b"ustar\x0000",                                  # magic + version
        bytes(32), bytes(32),                             # owner and group names: empty
        bytes(16),                                        # device major, minor: empty (not a device)
        bytes(155 + 12),                                  # name prefix, padding
    ])
    return head[:148] + b"%06o\0 " % sum(head) + head[156:]


def tar_bytes_for(samples: Iterable[tuple[str, Mapping[str, bytes]]], fileobj) -> int:
    """Write ``(key, {ext: payload})`` samples as a ustar archive to ``fileobj``; returns bytes written."""
    n = 0
    for key, members in samples:
        if "." in key:
            raise ValueError(f"sample key {key!r} contains a dot; WebDataset would split it")
        for ext in sorted(members):
            payload = members[ext]
            pad = -len(payload) % BLOCK
            fileobj.write(ustar_header(f"{key}.{ext}", len(payload)))
            fileobj.write(payload)
            if pad:
                fileobj.write(_ZERO[:pad])
            n += BLOCK + len(payload) + pad
    end = 2 * BLOCK
    end += -(n + end) % RECORD
    fileobj.write(bytes(end))
    return n + end


class _HashingWriter:
    """File wrapper that hashes what is written, so no second read pass is needed."""

    def __init__(self, f):
        self._f, self.sha = f, hashlib.sha256()

    def write(self, b) -> int:
        self._f.write(b)
        self.sha.update(b)
        return len(b)


def write_shard(path: str | os.PathLike, first: int,
                samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> ShardInfo:
    """Write one shard atomically at ``path`` and return its size, count and sha256.

    Members of a sample are written in sorted extension order (``.jpg`` before ``.json``).
    """
    path = os.fspath(path)
    count = 0

    def counted():
        nonlocal count
        for item in samples:
            count += 1
            yield item

    with atomic_path(path) as tmp, open(tmp, "wb", buffering=1 << 20) as f:
        w = _HashingWriter(f)
        size = tar_bytes_for(counted(), w)
    return ShardInfo(os.path.basename(path), first, count, size, w.sha.hexdigest())

