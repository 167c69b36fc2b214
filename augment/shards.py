"""Deterministic, atomic tar shards in the WebDataset layout.

Every byte of a shard is a function of its samples: members carry a fixed mtime, owner and mode, appear
in sample order with each sample's members adjacent, and the tar is written under a temporary name and
renamed only once complete, so a crash never leaves a truncated ``.tar`` under a final name.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from typing import Iterable, Mapping

SHARD_NAME = "shard-{:06d}.tar"
TMP_SUFFIX = ".partial"
# 2000-01-01T00:00:00Z: a fixed, non-zero mtime (some tools treat 0 as "unknown").
FIXED_MTIME = 946684800


def shard_name(index: int) -> str:
    """File name of shard ``index`` inside a set."""
    return SHARD_NAME.format(index)


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


class _HashingWriter(io.RawIOBase):
    """File wrapper that hashes and counts what is written, so no second read pass is needed."""

    def __init__(self, f):
        self._f, self.sha = f, hashlib.sha256()
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._f.write(b)
        self.sha.update(b)
        self.n += len(b)
        return len(b)

    def tell(self) -> int:
        return self.n


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, FIXED_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def tar_bytes_for(samples: Iterable[tuple[str, Mapping[str, bytes]]], fileobj) -> None:
    """Write ``(key, {ext: payload})`` samples as a ustar archive to ``fileobj``."""
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            if "." in key:
                raise ValueError(f"sample key {key!r} contains a dot; WebDataset would split it")
            for ext in sorted(members):
                payload = members[ext]
                tar.addfile(_member(f"{key}.{ext}", len(payload)), io.BytesIO(payload))


def write_shard(path: str | os.PathLike, first: int,
                samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> ShardInfo:
    """Write one shard atomically at ``path`` and return its size, count and sha256.

    Members of a sample are written in sorted extension order (``.jpg`` before ``.json``).
    """
    path = os.fspath(path)
    tmp = path + TMP_SUFFIX
    count = 0

    def counted():
        nonlocal count
        for item in samples:
            count += 1
            yield item

    try:
        with open(tmp, "wb") as f:
            w = _HashingWriter(f)
            tar_bytes_for(counted(), w)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return ShardInfo(os.path.basename(path), first, count, w.n, w.sha.hexdigest())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
