"""The manifest of a shard set: what it is, how it was made, and the identity of its bytes.

This module is the one piece of ``augment`` that the trainers import (imports flow augment -> train ->
probe). It reads a set from a local folder or from any URL that fsspec understands, and it computes
the set's content identifier. The format is specified in ``docs/shard-format.md``.
"""
from __future__ import annotations

import errno
import http.client
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import click

from augment.files import bytes_digest, write_text_atomic

MANIFEST = "manifest.json"
# What else this tool keeps in a set's folder besides the shards (docs/shard-format.md)
CARD = "CARD.md"          # written by publish
JOB_DIR = ".render"       # a render's bookkeeping and lock
FETCH_DIR = ".fetch"      # while fetching: the lock and the identifier of the set being fetched
FORMAT = "single-image-ssl/shards"
FORMAT_VERSION = 1
ID_PREFIX = "sis1-"


def _is_url(location: str) -> bool:
    return "://" in location


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name if _is_url(base) else os.path.join(base, name)


@dataclass(frozen=True)
class ShardEntry:
    name: str
    first: int
    count: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.json``; ``root`` is the folder or URL that holds it."""

    root: str
    id: str
    count: int
    size: int
    image_format: str
    seed: int
    config: dict[str, Any]
    sources: list[dict[str, Any]]
    shards: list[ShardEntry]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def shard_urls(self) -> list[str]:
        """Full paths (or URLs) of every shard, in order."""
        return [_join(self.root, s.name) for s in self.shards]

    def shard_path(self, entry: ShardEntry) -> str:
        return _join(self.root, entry.name)


def identity_payload(data: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest that defines a set's identity: format, config, sources' and shards' bytes.

    Library versions, timings and host names are recorded in the manifest but are not part of the
    identity: two sets with the same identifier hold the same bytes, whoever rendered them.
    """
    return {
        "format": data.get("format", FORMAT),
        "format_version": data["format_version"],
        "config": data["config"],
        "sources": [s["sha256"] for s in data["sources"]],
        "shards": [[s["name"], s["count"], s["sha256"]] for s in data["shards"]],
    }


def canonical_identity(data: dict[str, Any]) -> bytes:
    """The exact bytes hashed into the identifier (specified in docs/sharing.md).

    Sorted keys, no whitespace, ASCII escapes and Python's shortest round-trip float repr: the same
    manifest gives the same bytes on any machine, and parsing a written manifest back gives them again.
    NaN and infinities are refused (they are not JSON and other readers would disagree).
    """
    return json.dumps(identity_payload(data), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def content_id(data: dict[str, Any]) -> str:
    """Content identifier of a set: ``sis1-`` + the first 32 hex digits of sha256(canonical identity)."""
    return ID_PREFIX + bytes_digest(canonical_identity(data))[:32]


def identity_problem(m: "Manifest") -> str | None:
    """None when the manifest's stored ``id`` matches its content, else a one-line description."""
    try:
        actual = content_id(m.raw)
    except (KeyError, TypeError, ValueError) as e:
        return f"its identity cannot be computed ({type(e).__name__}: {e})"
    if actual != m.id:
        return f"its stored id {m.id} disagrees with its content ({actual}); it was edited after it was written"
    return None


def check_identity(m: "Manifest") -> None:
    """Fail with a one-line error when the manifest's stored ``id`` does not match its content."""
    problem = identity_problem(m)
    if problem:
        raise click.ClickException(f"{_join(m.root, MANIFEST)}: {problem}; re-render or re-publish the set "
                                   f"(a set's identifier must prove its bytes)")


# --------------------------------------------------------------------------- reading from URLs

HTTP_SCHEMES = ("http://", "https://")
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def describe_error(e: BaseException) -> str:
    """A short, single-line reason for a network or file error (no traceback, no nested reprs)."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        reason = e.reason
        text = getattr(reason, "strerror", None) or str(reason)
        return f"cannot connect ({text})"
    if isinstance(e, http.client.HTTPException):
        return f"connection broken ({type(e).__name__})"
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}".splitlines()[0]


def open_location(location: str, offset: int = 0, timeout: float = 60.0):
    """Open a local path, an http(s) URL (standard library) or any fsspec URL for binary reading.

    Returns ``(stream, start)``: ``start`` is where the stream begins, ``offset`` when the source can
    seek or honours an HTTP Range request, else 0 (the caller must then restart from scratch).
    fsspec's http backend needs aiohttp, which is not a dependency, hence urllib for http(s).
    """
    if location.startswith(HTTP_SCHEMES):
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        req = urllib.request.Request(location, headers=headers)
        resp = urllib.request.urlopen(req, timeout=timeout)
        return resp, offset if offset and resp.status == 206 else 0
    if _is_url(location):
        import fsspec

        f = fsspec.open(location, "rb").open()
    else:
        f = open(location, "rb")
    if offset:
        f.seek(offset)
    return f, offset


def write_manifest(folder: str | os.PathLike, data: dict[str, Any]) -> str:
    """Write ``manifest.json`` atomically (temporary file, fsync, rename); returns the set's identifier."""
    data = dict(data)
    data.setdefault("format", FORMAT)
    data.setdefault("format_version", FORMAT_VERSION)
    data["id"] = content_id(data)
    write_text_atomic(os.path.join(os.fspath(folder), MANIFEST), json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data["id"]


def _read_text(location: str) -> tuple[str, str]:
    """Return (root, manifest text) for a folder, a manifest path, or a URL of either."""
    if not location.strip():
        raise click.ClickException("no shard set given (the path is empty); give a folder rendered by "
                                   "`python -m augment render`, or its URL")
    if location.endswith(MANIFEST):
        path, root = location, location[: -len(MANIFEST)].rstrip("/") or "."
    else:
        root, path = location.rstrip("/") or location, _join(location, MANIFEST)
    if not _is_url(location):
        if not os.path.exists(root):
            raise click.ClickException(f"{root}: no such folder; give a folder rendered by "
                                       f"`python -m augment render` (or `make shards`)")
        if os.path.isfile(root):
            raise click.ClickException(f"{root}: a file, not a shard set; give the folder `python -m augment "
                                       f"render --out DIR` wrote (it holds {MANIFEST} and shard-*.tar)")
        if not os.path.isfile(path):
            fix = (f"render one with `python -m augment render --out {root}` or fetch one" if not os.listdir(root)
                   else f"give the folder `python -m augment render --out DIR` wrote (it holds {MANIFEST})")
            raise click.ClickException(f"{root}: not a shard set (no {MANIFEST}); {fix}")
        try:
            with open(path, "rb") as f:
                return root, _decode(f.read(), path)
        except OSError as e:
            raise click.ClickException(f"{path}: cannot read the manifest ({describe_error(e)}); check the "
                                       f"file's permissions or re-fetch the set") from None
    try:
        stream, _ = open_location(path)
        with stream:
            data = stream.read()
    except Exception as e:  # network and backend errors come in many types; the message is what matters
        raise click.ClickException(f"{path}: cannot read the manifest ({describe_error(e)}); "
                                   f"check the URL and that the set was published there") from None
    return root, _decode(data, path)


def _decode(data: bytes, path: str) -> str:
    """The manifest's text; bytes that are not UTF-8 are refused (a manifest is UTF-8 JSON, always)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.ClickException(f"{path}: not a shard-set manifest (not UTF-8 text: byte {e.start}); "
                                   f"re-fetch or re-render the set") from None


def check_shard_name(root: str, name: Any, source: str) -> None:
    """Refuse a shard name that would read a file outside the set's folder (or URL prefix).

    A name is one plain file name: no folder part, no ``..``, not absolute. Locally, the file it names
    must also resolve inside the folder (a symlink pointing out is refused). Every reader of a manifest
    (verify, info, show, merge, publish, fetch, the trainers' loaders) goes through here.
    """
    bad = (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
           or "\0" in name or os.path.isabs(name))
    if not bad and not _is_url(root):
        real_root, real = os.path.realpath(root), os.path.realpath(os.path.join(root, name))
        bad = real == real_root or os.path.commonpath([real_root, real]) != real_root
    if bad:
        raise click.ClickException(f"{source}: shard {name!r} is outside the set's folder; refusing to read "
                                   f"it (a manifest may only name files inside its own folder)")


# The fix for a manifest that cannot be read: the set's bytes are only trusted through a good one.
REDO = "; re-render or re-fetch the set"


def parse_manifest(root: str, text: str, source: str = MANIFEST, check_id: bool = True) -> Manifest:
    """Parse and check manifest text; every problem is one clear error naming ``source``.

    ``check_id``: refuse a manifest whose stored id disagrees with its content (a hand-edited or
    truncated shard list would otherwise be trained on silently); ``verify`` reports it instead.
    """
    try:
        data = json.loads(text)
    except RecursionError:  # deeply nested JSON: the parser's stack, not the file, gives up
        raise click.ClickException(f"{source}: not a shard-set manifest (JSON nested too deeply){REDO}") from None
    except ValueError as e:
        raise click.ClickException(f"{source}: not a shard-set manifest (invalid JSON: {e}){REDO}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise click.ClickException(f"{source}: not a shard-set manifest (format is not {FORMAT!r}){REDO}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        fix = "upgrade the package" if newer else "re-render or re-fetch the set"
        raise click.ClickException(f"{source}: not a shard-set manifest this tool reads (format_version "
                                   f"{version!r}, this tool reads {FORMAT_VERSION}); {fix}")
    try:
        shards = [ShardEntry(s["name"], _natural(s["first"], "first"), _natural(s["count"], "count", 1),
                             _natural(s["bytes"], "bytes"), s["sha256"]) for s in data["shards"]]
        for s in shards:
            check_shard_name(root, s.name, source)
        m = Manifest(root=root, id=data["id"], count=_natural(data["count"], "count", 1),
                     size=_natural(data["size"], "size", 1), image_format=data["image_format"],
                     seed=_natural(data["seed"], "seed"), config=data["config"], sources=data["sources"],
                     shards=shards, raw=data)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise click.ClickException(f"{source}: not a shard-set manifest (bad or missing field {e}){REDO}") from None
    if check_id:
        check_identity(m)
    return m


def _natural(value: Any, name: str, least: int = 0) -> int:
    """An integer field >= ``least`` (a negative count or size is a damaged manifest, never a set)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name!r}: {value!r} is not an integer >= {least}")
    return value


def is_single_image(manifest: Manifest) -> bool:
    """True only for a rendered set made from exactly one source image (the paper's setting).

    A packed ImageFolder (``augment pack``: ``"kind": "packed"``) is a dataset, never a single image,
    whatever its count; a render of N > 1 images is not one either.
    """
    raw, config = manifest.raw, manifest.config
    rendered = raw.get("kind", "rendered") == "rendered" and config.get("kind") != "imagefolder"
    return rendered and len(manifest.sources) == 1 and config.get("n", 1) == 1


def read_manifest(location: str | os.PathLike, check_id: bool = True) -> Manifest:
    """Read the manifest of the set at ``location`` (folder, manifest path, or fsspec/http URL)."""
    location = os.fspath(location)
    root, text = _read_text(location)
    return parse_manifest(root, text, source=_join(root, MANIFEST), check_id=check_id)


def read_manifest_text(location: str | os.PathLike) -> tuple[Manifest, str]:
    """Like ``read_manifest``, also returning the manifest's exact text (to copy a set byte for byte)."""
    location = os.fspath(location)
    root, text = _read_text(location)
    return parse_manifest(root, text, source=_join(root, MANIFEST)), text
