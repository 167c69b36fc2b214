"""Read: tar shards -> ``(url, key, image bytes)`` per sample, with a lean 512-byte-header tar reader.

``tar_samples`` groups members by key as webdataset does (tested against it) but reads only the image
member and seeks past everything else, including samples outside the reader's piece. ``read_pieces``
opens shards through ``augment.manifest.open_location`` (local, http(s), fsspec), optionally hashes
each shard's bytes as it streams (checked against the manifest at the shard's end), and names the
shard in every error.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
from typing import BinaryIO, Iterator, Sequence

from augment.manifest import open_location
from train.loader.plan import Piece

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




class ShardError(RuntimeError):
    """A shard could not be read mid-epoch, or its bytes differ from the manifest; names the shard."""


class _Hashing(io.RawIOBase):
    """A read-only stream that hashes every byte it passes on (never seeks, so nothing escapes the hash)."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        into = getattr(self.f, "readinto", None)
        if into is None:                       # a stream without readinto (some fsspec files)
            data = self.f.read(len(b))
            b[:len(data)] = data
            n = len(data)
        else:
            n = into(b) or 0                   # straight into the caller's buffer: no extra copy
        self.sha.update(memoryview(b)[:n])
        self.n += n
        return n

    def drain(self) -> str:
        """Read (and hash) whatever follows the tar's end; returns the hex digest of the whole stream."""
        while block := self.f.read(1 << 20):
            self.sha.update(block)
            self.n += len(block)
        return self.sha.hexdigest()


def read_pieces(urls: Sequence[str], counts: Sequence[int], pieces: Sequence[Piece], ext: str,
                digests: Sequence[str] = ()) -> Iterator[tuple[str, str, object]]:
    """``(url, key, image bytes)`` of the samples of ``pieces`` in order.

    A tar error, a shard that ends before the manifest's count (a damaged header ends a tar archive)
    or, when ``digests`` are given, a shard whose sha256 differs from the manifest's, names the shard.
    The digest is checked at the shard's end: a flipped bit inside a JPEG decodes to wrong pixels with
    no error, so only the hash can tell.
    """
    for s, k, j in pieces:
        url, n = urls[s], 0
        try:
            # open_location (local, http(s) via urllib, fsspec) rather than webdataset's gopen, which
            # streams http(s) through a `curl` subprocess that is not always installed (docs/sharing.md).
            stream, _ = open_location(url)
            with stream:
                src = _Hashing(stream) if digests else stream
                for key, data in tar_samples(src, ext, k, j):
                    n += 1
                    if data is not SKIPPED:
                        yield url, key, data
                got = src.drain() if digests else None
        except Exception as e:  # tar, IO and fsspec errors alike: name the shard and the fix
            raise ShardError(f"{url}: cannot read the shard mid-epoch ({type(e).__name__}: {e}); run "
                             f"`python -m augment verify` on the set") from None
        if counts and n != counts[s]:
            raise ShardError(f"{url}: holds {n} readable samples, the manifest says {counts[s]}; the shard "
                             f"is damaged: run `python -m augment verify` on the set and re-render or re-fetch it")
        if digests and got != digests[s]:
            raise ShardError(f"{url}: its sha256 differs from the manifest's (the shard changed after it was "
                             f"written); training stopped before using it further. Re-render or re-fetch "
                             f"it (`python -m augment verify`), or pass --no-verify-stream to train anyway")
