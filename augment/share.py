"""Sharing shard sets between labs: ``publish`` a verified set to any fsspec destination with a card,
``fetch`` a published set shard by shard with checksums and resume (issue 7; docs/sharing.md).

A set is trusted by its bytes, not its location: every shard is checked against the manifest's sha256
before it is kept under its final name, and the manifest's identifier is recomputed from its content.
The manifest is written last on both sides, so a folder holding ``manifest.json`` is a complete set.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import click
from tqdm import tqdm

from augment.cli import cli
from augment.files import TMP_MARK, atomic_write, describe_os_error, file_digest, remove_stale_temps, write_text_atomic
from augment.lock import folder_lock
from augment.manifest import (CARD, DISK_FULL, FETCH_DIR, MANIFEST, Manifest, ShardEntry, check_identity,
                              describe_error, open_location, read_manifest_text)
from augment.verify import presence_problem

CHUNK = 1 << 20
TMP_SUFFIX = ".partial"  # a shard being downloaded: kept across runs, so that the next fetch resumes it
PAPER_BIBTEX = """@inproceedings{asano2020critical,
  title     = {A critical analysis of self-supervision, or what we can learn from a single image},
  author    = {Asano, Yuki M. and Rupprecht, Christian and Vedaldi, Andrea},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2020}
}"""
# A shard name from a downloaded manifest becomes a local path: plain file names only.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


# --------------------------------------------------------------------------- verify


def verify_shards(m: Manifest, progress: bool = True) -> list[str]:
    """Check every shard of a local set against the manifest (size, then sha256); returns problems."""
    problems = []
    bar = tqdm(total=sum(e.bytes for e in m.shards), unit="B", unit_scale=True, desc="verify",
               disable=not progress, leave=False)
    with bar:
        for e in m.shards:
            if problem := presence_problem(m, e):
                problems.append(problem)
            elif file_digest(m.shard_path(e)) != e.sha256:
                problems.append(f"{e.name}: sha256 differs from the manifest")
            bar.update(e.bytes)
    return problems


# --------------------------------------------------------------------------- publish


@dataclass(frozen=True)
class PublishConfig:
    set: str
    dest: str
    public_url: str = ""      # where readers will fetch from (the card's fetch command); default: dest
    progress: bool = True


def render_card(m: Manifest, url: str) -> str:
    """The human-readable CARD.md of a set: what, identifier, how made, how to fetch and cite."""
    raw = m.raw
    sources = "\n".join(f"| {s.get('name', '?')} | `{s['sha256']}` |" for s in m.sources)
    versions = "\n".join(f"- {k}: {v}" for k, v in sorted((raw.get("versions") or {}).items())) or "- (not recorded)"
    total = sum(e.bytes for e in m.shards)
    return f"""# Shard set `{m.id}`

Frozen augmented patches for single-image self-supervised pre-training (Asano, Rupprecht &
Vedaldi, ICLR 2020): {m.count} patches of {m.size}x{m.size} pixels ({m.image_format}), seed {m.seed},
in {len(m.shards)} WebDataset tar shards ({total} bytes).

**Identifier:** `{m.id}`

The identifier hashes the rendering config, the sources' sha256 and every shard's name, count and
sha256 (docs/sharing.md): two sets with this identifier hold the same bytes.

## How it was made

Config (as recorded in `manifest.json`):

```json
{json.dumps(m.config, indent=1, sort_keys=True)}
```

| source | sha256 |
|---|---|
{sources}

Library versions:
{versions}

## Fetch

```
python -m augment fetch {url} DIR --expect {m.id}
```

Every shard is checked against its sha256 before it is kept; an interrupted fetch resumes. Trainers
also stream it without a download: `--shards {url}`.

## Cite

Cite the paper and name the set by its identifier, e.g. "trained on shard set `{m.id}`".

```bibtex
{PAPER_BIBTEX}
```
"""


def _open_fs(dest: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(dest)
    except ImportError as e:
        scheme = dest.split("://", 1)[0]
        extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(scheme, "matching")
        raise click.ClickException(f"{dest}: no filesystem for {scheme}:// ({str(e).splitlines()[0]}); "
                                   f"install the {extra} extra: pip install -e '.[{extra}]'") from None
    except ValueError as e:
        raise click.ClickException(f"{dest}: not a destination fsspec understands ({e})") from None


def _check_dest(fs, root: str, dest: str, m: Manifest) -> None:
    """Refuse a destination that already holds a different set (same set: publishing again is fine), or
    other files and no set (a data folder: the shards would land among them)."""
    target = _join(root, MANIFEST)
    if not fs.exists(target):
        if fs.isdir(root):
            own = {e.name for e in m.shards} | {CARD}   # what an interrupted publish of this set left
            others = sorted(n for n in (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
                            if n not in own and TMP_MARK not in n)
            if others:
                what = "1 other entry" if len(others) == 1 else f"{len(others)} other entries"
                raise click.ClickException(f"{dest}: holds {what} (e.g. {others[0]}) and no set; publish {m.id} "
                                           f"to a new or empty destination")
        return
    try:
        other = json.loads(fs.cat_file(target)).get("id")
    except (ValueError, RecursionError):
        other = "an unreadable manifest"
    if other != m.id:
        raise click.ClickException(f"{dest}: already holds another set ({other}); publish {m.id} to an "
                                   f"empty destination")


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _put(fs, src: str, dst: str) -> None:
    """Copy a local file to ``dst``; on a local destination atomically (a full disk leaves no partial file
    and keeps what was there)."""
    if not _is_local(fs):
        fs.put_file(src, dst)
        return
    with open(src, "rb") as i, atomic_write(dst) as o:
        shutil.copyfileobj(i, o, CHUNK)


def _pipe(fs, dst: str, data: bytes) -> None:
    """Write ``data`` to ``dst``; on a local destination atomically."""
    if not _is_local(fs):
        fs.pipe_file(dst, data)
        return
    with atomic_write(dst) as o:
        o.write(data)


def _check_local_space(root: str, dest: str, m: Manifest, extra: int) -> None:
    """Refuse before copying when the destination folder cannot hold the shards it lacks."""
    need = extra + sum(e.bytes for e in m.shards if not os.path.isfile(os.path.join(root, e.name)))
    free = shutil.disk_usage(root).free
    if need > free:
        raise click.ClickException(f"{dest}: needs about {need:,} bytes but {free:,} are free in {root}; free "
                                   f"some space or publish elsewhere")


def publish_set(cfg: PublishConfig) -> str:
    """Verify a local set, copy it to ``cfg.dest`` (any fsspec URL), write CARD.md; returns the id.

    Order: shards, card, manifest last, so readers never see a manifest whose shards are not there.
    """
    if "://" in cfg.set:
        raise click.ClickException(f"{cfg.set}: publish copies a local set; fetch it first with "
                                   f"`python -m augment fetch {cfg.set} DIR`")
    m, text = read_manifest_text(cfg.set)
    check_identity(m)
    fs, root = _open_fs(cfg.dest)  # before the long verification: a missing extra fails at once
    problems = verify_shards(m, cfg.progress)
    if problems:
        raise click.ClickException(f"{cfg.set}: not published, {len(problems)} shard(s) fail verification: "
                                   f"{'; '.join(problems)}; re-render the set")
    card = render_card(m, cfg.public_url or cfg.dest).encode()
    left = sum(e.bytes for e in m.shards) + len(card) + len(text.encode())  # bytes still to write
    where = root
    try:
        _check_dest(fs, root, cfg.dest, m)
        fs.makedirs(root, exist_ok=True)
        if _is_local(fs):
            _check_local_space(root, cfg.dest, m, len(card) + len(text.encode()))
        with tqdm(total=sum(e.bytes for e in m.shards), unit="B", unit_scale=True, desc="publish",
                  disable=not cfg.progress) as bar:
            for e in m.shards:
                where = _join(root, e.name)
                _put(fs, m.shard_path(e), where)
                left -= e.bytes
                bar.update(e.bytes)
        where = _join(root, CARD)
        _pipe(fs, where, card)
        where = _join(root, MANIFEST)
        _pipe(fs, where, text.encode())
    except click.ClickException:
        raise
    except Exception as e:  # OSError, and object stores' own errors (credentials, permissions)
        if isinstance(e, OSError) and _is_local(fs):
            raise click.ClickException(f"{cfg.dest}: publishing stopped; {describe_os_error(e, where, need=left)}; "
                                       f"then run the same command again (files already there are kept)") from None
        raise click.ClickException(f"{cfg.dest}: publishing failed ({describe_error(e)}); fix the "
                                   f"destination and run the same command again") from None
    return m.id


@cli.command()
@click.argument("set_dir", metavar="SET")
@click.argument("dest")
@click.option("--public-url", default="", help="URL readers fetch from, for the card (default: DEST).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def publish(set_dir: str, dest: str, public_url: str, quiet: bool) -> None:
    """Verify the set SET and copy it, with a CARD.md, to DEST (folder or fsspec URL: s3://, gs://, ...)."""
    sid = publish_set(PublishConfig(set_dir, dest, public_url, not quiet))
    click.echo(f"published {sid} to {dest} (card: {_join(dest, CARD)})")


# --------------------------------------------------------------------------- fetch


@dataclass(frozen=True)
class FetchConfig:
    url: str
    out: str
    expect: str = ""
    jobs: int = 4
    attempts: int = 2         # a shard failing its check is fetched once more, then reported
    timeout: float = 60.0     # seconds without data before a connection counts as dead
    progress: bool = True


class DiskFull(Exception):
    """Writing failed for lack of space: stops every download (retrying cannot help)."""


class ShardFailed(Exception):
    """One attempt at one shard failed; ``keep`` says whether the partial file is worth resuming;
    ``gone``: the connection itself failed (refused, reset, timed out), not the server's answer."""

    def __init__(self, msg: str, keep: bool, gone: bool = False):
        super().__init__(msg)
        self.keep, self.gone = keep, gone


# Connection failures in a row (across shards, no shard completing in between) after which the server
# counts as gone: the fetch stops instead of waiting out the timeout for every remaining shard.
GONE_AFTER = 3


def _served_size(stream, start: int) -> int | None:
    """The size of the server's file, from Content-Range or Content-Length; None when it is not said."""
    headers = getattr(stream, "headers", None)
    if headers is None:
        return None
    total = (headers.get("Content-Range") or "").rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _check_names(m: Manifest, source: str) -> None:
    names = [e.name for e in m.shards]
    bad = [n for n in names if not _SAFE_NAME.match(n) or n in (MANIFEST, CARD) or n.endswith(TMP_SUFFIX)
           or TMP_MARK in n]
    if bad or len(set(names)) != len(names):
        raise click.ClickException(f"{source}: not a shard-set manifest (unsafe or repeated shard name "
                                   f"{(bad or names)[0]!r}); refusing to write it")


class _Fetcher:
    """Downloads the shards of one manifest into a folder (thread-safe progress, stop on a full disk)."""

    def __init__(self, cfg: FetchConfig, m: Manifest, bar: tqdm):
        self.cfg, self.m, self.bar = cfg, m, bar
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.failed_in_a_row, self.gone = 0, ""  # gone: why the server counts as gone ("" while it answers)

    def _count(self, err: ShardFailed | None) -> None:
        """Track connection failures in a row; GONE_AFTER of them stop every download."""
        with self.lock:
            if err is None or not err.gone:
                self.failed_in_a_row = 0
                return
            self.failed_in_a_row += 1
            if self.failed_in_a_row >= GONE_AFTER and not self.gone:
                self.gone = str(err)
                self.stop.set()

    def _advance(self, n: int) -> None:
        with self.lock:
            self.bar.update(n)

    def _download(self, e: ShardEntry, partial: str) -> None:
        """One attempt: resume ``partial`` where it stops (HTTP Range or seek), stream the rest into it."""
        have = os.path.getsize(partial) if os.path.exists(partial) else 0
        if have > e.bytes:
            self._advance(-have)
            os.remove(partial)
            have = 0
        if have == e.bytes:
            return
        src = self.m.shard_path(e)
        try:
            stream, start = open_location(src, have, self.cfg.timeout)
        except urllib.error.HTTPError as err:  # the server answered; 416: our partial is longer than its file
            raise ShardFailed(describe_error(err), keep=err.code != 416) from None
        except Exception as err:  # socket and fsspec errors: the message is what matters
            raise ShardFailed(describe_error(err), keep=True, gone=True) from None
        local = "://" not in src
        served = os.path.getsize(src) if local else _served_size(stream, start)
        if served is not None and served != e.bytes:  # the same wrong bytes however often we ask
            stream.close()
            raise ShardFailed(f"the {'source' if local else 'server'}'s copy has {served:,} bytes, manifest says "
                              f"{e.bytes:,}", keep=False)
        if start != have:  # the server ignored the Range request: the partial bytes are thrown away
            self._advance(-have)
        got = start
        try:
            with stream, open(partial, "r+b" if start else "wb") as f:
                f.seek(start)
                f.truncate()
                # Read one block past the expected size at most: a server sending more is wrong anyway.
                # read1: whatever has arrived (up to CHUNK), so a stalled or killed fetch keeps it.
                read = getattr(stream, "read1", stream.read)
                while got <= e.bytes and not self.stop.is_set():
                    try:
                        block = read(CHUNK)
                    except Exception as err:  # reset, timeout, IncompleteRead, fsspec backend errors
                        raise ShardFailed(f"{describe_error(err)} after {got} of {e.bytes} bytes",
                                          keep=True, gone=True) from None
                    if not block:
                        break
                    f.write(block)
                    f.flush()  # on disk, not in a buffer, when the process is killed
                    got += len(block)
                    self._advance(len(block))
        except OSError as err:
            if err.errno in DISK_FULL:
                raise DiskFull(f"{partial}: {describe_error(err)}") from None
            raise
        if self.stop.is_set():
            raise ShardFailed("stopped", keep=True)
        if got < e.bytes:
            raise ShardFailed(f"connection closed after {got} of {e.bytes} bytes", keep=True, gone=True)

    def _attempt(self, e: ShardEntry, final: str, partial: str) -> None:
        self._download(e, partial)
        if os.path.getsize(partial) != e.bytes:
            raise ShardFailed(f"{os.path.getsize(partial)} bytes, manifest says {e.bytes}", keep=False)
        if file_digest(partial) != e.sha256:
            raise ShardFailed("sha256 differs from the manifest", keep=False)
        os.replace(partial, final)

    def shard(self, e: ShardEntry) -> str | None:
        """Fetch one shard (up to ``attempts`` tries); None when it is kept, else why it failed."""
        final = os.path.join(self.cfg.out, e.name)
        partial = final + TMP_SUFFIX
        why = ""
        for _ in range(self.cfg.attempts):
            if self.stop.is_set():
                return f"{e.name}: not fetched (stopped)"
            try:
                self._attempt(e, final, partial)
                self._count(None)
                return None
            except ShardFailed as err:
                why = str(err)
                self._count(err)
                if not err.keep and os.path.exists(partial):
                    self._advance(-os.path.getsize(partial))
                    os.remove(partial)
            except DiskFull:
                self.stop.set()
                raise
        return f"{e.name}: {why}"


def _local_done(cfg: FetchConfig, m: Manifest) -> set[str]:
    """Shards already under their final name with the right sha256 (kept by a resumed fetch)."""
    done = set()
    for e in m.shards:
        path = os.path.join(cfg.out, e.name)
        if os.path.isfile(path) and os.path.getsize(path) == e.bytes and file_digest(path) == e.sha256:
            done.add(e.name)
        elif os.path.exists(path):
            os.remove(path)  # a damaged shard under a final name is worse than none
    return done


def _refuse_foreign(cfg: FetchConfig, m: Manifest, manifest_url: str) -> None:
    """Refuse a folder holding anything but this set, complete or being fetched (by its marker)."""
    local, marker = os.path.join(cfg.out, MANIFEST), os.path.join(cfg.out, FETCH_DIR, "set")
    if os.path.isfile(local) or os.path.isfile(marker):
        try:
            with open(local if os.path.isfile(local) else marker) as f:
                other = json.load(f).get("id")
        except (OSError, ValueError, AttributeError, RecursionError):
            other = "an unreadable manifest"
        if other != m.id:
            what = "another set" if os.path.isfile(local) else "an interrupted fetch of another set"
            raise click.ClickException(f"{cfg.out}: already holds {what} ({other}); fetch {manifest_url} "
                                       f"into an empty folder")
    elif os.path.isdir(cfg.out) and (foreign := sorted(set(os.listdir(cfg.out)) - {FETCH_DIR})):
        raise click.ClickException(f"{cfg.out}: not empty and holds no copy of {m.id} (it holds "
                                   f"{foreign[0]!r}{' ...' if len(foreign) > 1 else ''}); fetch into an "
                                   f"empty or new folder")


def _check_space(cfg: FetchConfig, need: int) -> None:
    free = shutil.disk_usage(cfg.out).free
    if need > free:
        raise click.ClickException(f"{cfg.out}: needs {need} more bytes but {free} are free; free some "
                                   f"space or fetch elsewhere")


def _fetch_card(cfg: FetchConfig, root: str) -> None:
    """Copy CARD.md when the publisher wrote one; a set is complete without it."""
    try:
        stream, _ = open_location(_join(root, CARD) if "://" in root else os.path.join(root, CARD),
                                  timeout=cfg.timeout)
        with stream:
            write_text_atomic(os.path.join(cfg.out, CARD), stream.read().decode("utf-8", errors="replace"))
    except Exception:  # noqa: BLE001  optional file: absent or unreadable is not an error
        pass


def fetch_set(cfg: FetchConfig) -> Manifest:
    """Download the set at ``cfg.url`` into ``cfg.out``, checking every shard; returns its manifest.

    Identity is checked before any shard moves; the manifest is written last, once every shard passed.
    """
    if "://" not in cfg.url and not os.path.isfile(cfg.url if cfg.url.endswith(MANIFEST)
                                                   else os.path.join(cfg.url, MANIFEST)):
        raise click.ClickException(f"{cfg.url}: no {MANIFEST} there; pass the folder (or URL) of a "
                                   f"published set")
    m, text = read_manifest_text(cfg.url)
    manifest_url = _join(m.root, MANIFEST) if "://" in m.root else os.path.join(m.root, MANIFEST)
    check_identity(m)
    _check_names(m, manifest_url)
    if cfg.expect and cfg.expect != m.id:
        raise click.ClickException(f"{manifest_url}: set is {m.id}, not the expected {cfg.expect}; "
                                   f"nothing downloaded (check the URL or the --expect identifier)")
    _refuse_foreign(cfg, m, manifest_url)  # before anything is created in the folder
    jdir = os.path.join(cfg.out, FETCH_DIR)
    with folder_lock(jdir, f"fetch into {cfg.out}"):
        _refuse_foreign(cfg, m, manifest_url)  # again under the lock: another fetch may have just started
        remove_stale_temps(cfg.out, locked=True)  # under the lock, every temporary file is a dead run's
        remove_stale_temps(jdir, locked=True)
        try:
            write_text_atomic(os.path.join(jdir, "set"), json.dumps({"id": m.id, "url": cfg.url}) + "\n")
        except OSError as e:
            raise click.ClickException(f"{cfg.out}: cannot write; {describe_os_error(e)}") from None
        _download_all(cfg, m)
        _fetch_card(cfg, m.root)
        write_text_atomic(os.path.join(cfg.out, MANIFEST), text)
        os.remove(os.path.join(jdir, "set"))
    with contextlib.suppress(OSError):
        os.rmdir(jdir)
    return m


def _download_all(cfg: FetchConfig, m: Manifest) -> None:
    """Fetch every shard not already complete in ``cfg.out`` (parallel, checked, resumable)."""
    done = _local_done(cfg, m)
    todo = [e for e in m.shards if e.name not in done]
    partial_bytes = sum(min(os.path.getsize(p), e.bytes) for e in todo
                        if os.path.exists(p := os.path.join(cfg.out, e.name + TMP_SUFFIX)))
    _check_space(cfg, sum(e.bytes for e in todo) - partial_bytes)
    total = sum(e.bytes for e in m.shards)
    with tqdm(total=total, initial=total - sum(e.bytes for e in todo) + partial_bytes, unit="B",
              unit_scale=True, desc="fetch", disable=not cfg.progress) as bar:
        f = _Fetcher(cfg, m, bar)
        try:
            with ThreadPoolExecutor(max(1, min(cfg.jobs, len(todo) or 1))) as pool:
                failures = [r for r in pool.map(f.shard, todo) if r]
        except DiskFull as e:
            raise click.ClickException(f"{e}; free space (the set needs {total} bytes) and run the same "
                                       f"command again: complete shards are kept, the partial one resumes") \
                from None
        except OSError as e:
            raise click.ClickException(f"{cfg.out}: cannot write ({describe_error(e)}); check the folder's "
                                       f"permissions and run the same command again") from None
    if f.gone:
        left = len(failures)
        raise click.ClickException(f"{cfg.url}: the server stopped answering ({GONE_AFTER} connections in a row "
                                   f"failed, the last: {f.gone}); {len(m.shards) - left} of {len(m.shards)} "
                                   f"shards are here, {left} left: run the same command again to resume")
    if failures:
        damaged = [x for x in failures if "sha256" in x or "manifest says" in x]
        shown = damaged or failures
        more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
        raise click.ClickException(f"{cfg.url}: {len(failures)} shard(s) not fetched after {cfg.attempts} "
                                   f"attempts: {'; '.join(shown[:3])}{more}; " + (
                                       ("the copy on the server is damaged: ask the publisher to re-publish"
                                        if "://" in cfg.url else f"the copy in {cfg.url} is damaged: verify it "
                                        f"(`python -m augment verify {cfg.url}`), then re-render or re-fetch it")
                                       if damaged else "run the same command again to resume"))


@cli.command()
@click.argument("url")
@click.argument("out", metavar="DIR")
@click.option("--expect", default="", metavar="ID", help="Refuse the set unless its identifier is ID.")
@click.option("--jobs", "-j", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Parallel shard downloads (threads).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(1),
              help="Seconds without data before a connection counts as dead.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fetch(url: str, out: str, expect: str, jobs: int, timeout: float, quiet: bool) -> None:
    """Download the set published at URL (its folder: http(s), fsspec URL or path) into DIR, verified."""
    m = fetch_set(FetchConfig(url, out, expect, jobs, timeout=timeout, progress=not quiet))
    click.echo(f"fetched {m.id} ({len(m.shards)} shards, {m.count} samples) into {out}")
