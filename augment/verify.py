"""Check a shard set against its manifest (`verify`), re-render samples, and summarise it (`info`)."""
from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass, field

import click
import numpy as np

from augment.files import file_digest, pid_alive, temp_names
from augment.lock import LOCK_NAME, read_holder
from augment.manifest import CARD, FETCH_DIR, JOB_DIR, MANIFEST, Manifest, ShardEntry, identity_problem, read_manifest
from augment.shards import brace_pattern, sample_key


@dataclass(frozen=True)
class VerifyConfig:
    folder: str
    rerender: int = 0
    sources: str | None = None
    seed: int = 0


@dataclass
class Report:
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def check_members(path: str, entry: ShardEntry, ext: str) -> str | None:
    """None if the tar holds exactly samples first..first+count-1, each with ``ext`` and ``json``."""
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
    except (tarfile.TarError, OSError) as e:
        return f"not a readable tar ({e})"
    want = [f"{sample_key(i)}.{x}" for i in range(entry.first, entry.first + entry.count) for x in sorted((ext, "json"))]
    if names != want:
        return f"holds {len(names) // 2} samples / unexpected members, manifest says {entry.count}"
    return None


def check_shard(m: Manifest, entry: ShardEntry) -> str | None:
    """One line naming what is wrong with a shard, or None if it matches the manifest."""
    path = m.shard_path(entry)
    if not os.path.isfile(path):
        return f"{entry.name}: missing"
    size = os.path.getsize(path)
    if size != entry.bytes:
        return f"{entry.name}: damaged ({size} bytes, manifest says {entry.bytes})"
    if file_digest(path) != entry.sha256:
        return f"{entry.name}: damaged (sha256 differs from the manifest)"
    bad = check_members(path, entry, m.image_format)
    return f"{entry.name}: {bad}" if bad else None


def read_member(path: str, name: str) -> bytes:
    with tarfile.open(path) as tar:
        return tar.extractfile(name).read()


def rerender(m: Manifest, k: int, sources: str | None, seed: int) -> list[str]:
    """Re-render ``k`` random samples from the manifest's recipe and sources; names each mismatch."""
    from augment.render import Recipe, Renderer
    from augment.sources import Source, find_source, load

    if m.config.get("kind") == "imagefolder":
        raise click.ClickException(f"{m.root}: a packed ImageFolder (`augment pack`), not a rendered set: there "
                                   f"is nothing to re-render; verify it without --rerender")
    if sources and not os.path.exists(sources):
        raise click.ClickException(f"--sources {sources}: no such file or folder; give the source image, or the "
                                   f"folder holding the set's sources")
    recipe = Recipe.from_config(m.config)
    loaded: list[Source] = []
    for rec in m.sources:
        src = load(rec["name"], find_source(rec, sources), rec.get("named"))
        if src.sha256 != rec["sha256"]:
            return [f"source {rec['name']}: sha256 differs from the manifest"]
        loaded.append(src)
    renderer = Renderer(recipe, loaded)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x7E5])))
    picks = sorted(int(i) for i in rng.choice(m.count, size=min(k, m.count), replace=False))
    bad = []
    for i in picks:
        entry = next(s for s in m.shards if s.first <= i < s.first + s.count)
        for ext, data in renderer.sample(i).items():
            name = f"{sample_key(i)}.{ext}"
            if read_member(m.shard_path(entry), name) != data:
                bad.append(f"{entry.name}: sample {name} differs from a re-render")
    return bad


def verify(cfg: VerifyConfig) -> Report:
    """Check every shard (presence, size, sha256, members) and optionally re-render samples."""
    m = read_manifest(cfg.folder, check_id=False)  # a wrong id is reported below, with the shards' state
    rep = Report(shards=len(m.shards), samples=sum(s.count for s in m.shards))
    if bad_id := identity_problem(m):  # a hand-edited manifest: its id no longer proves its bytes
        rep.problems.append(f"manifest.json: {bad_id}")
        rep.lines.append(rep.problems[-1])
    if rep.samples != m.count:
        rep.problems.append(f"manifest: shards hold {rep.samples} samples but count is {m.count}")
    for entry in m.shards:
        problem = check_shard(m, entry)
        if problem:
            rep.problems.append(problem)
            rep.lines.append(problem)
    rep.lines += stray_files(m) + stray_temps(m.root)
    if cfg.rerender > 0 and not rep.problems:
        bad = rerender(m, cfg.rerender, cfg.sources, cfg.seed)
        rep.problems += bad
        rep.lines += bad
    return rep


# What this tool itself keeps in a set's folder besides the manifest's shards.
OWN_NAMES = (MANIFEST, CARD, JOB_DIR, FETCH_DIR)
PART_PIECE = re.compile(r"manifest\.part-\d+-\d+\.json")  # a --shard-range job's piece, before merge


def stray_files(m: Manifest) -> list[str]:
    """One line per file or folder in the set's folder that is not part of the set (another tool's
    output, a stray shard), saying that nothing reads it and that it is not copied with the set."""
    listed = {s.name for s in m.shards}
    temps = set(temp_names(m.root))
    lines = []
    for name in sorted(os.listdir(m.root)):
        if name in listed or name in OWN_NAMES or name in temps or PART_PIECE.fullmatch(name):
            continue
        what = "a folder" if os.path.isdir(os.path.join(m.root, name)) else (
            "a shard" if name.endswith(".tar") else "a file")
        lines.append(f"{name}{'/' if what == 'a folder' else ''}: {what} not in the manifest, not part of the set "
                     f"(no reader opens it; publish does not copy it); move it out of the set's folder")
    return lines


def stray_temps(root: str) -> list[str]:
    """One line per temporary file in the set (an interrupted render's or fetch's), saying whether it is
    safe to remove: it is unless a render or fetch is running in the folder right now."""
    names = [n for d in ("", JOB_DIR, FETCH_DIR) for n in
             (os.path.join(d, t) if d else t for t in temp_names(os.path.join(root, d)))]
    writer = next((h for d in (JOB_DIR, FETCH_DIR) if (h := read_holder(os.path.join(root, d, LOCK_NAME)))
                   and pid_alive(h.pid)), None)
    why = (f"a temporary file; {writer.describe()} may be writing it: leave it" if writer else
           "a temporary file left by an interrupted run; not part of the set, safe to remove (the next "
           "render or fetch here removes it too)")
    resumable = ("a partial download; the next `augment fetch` into this folder resumes it (safe to remove: "
                 "it is then downloaded again)")
    return [f"{n}: {resumable if n.endswith('.partial') and not writer else why}" for n in names
            if os.path.isfile(os.path.join(root, n))]


def count_runs(counts: list[int]) -> str:
    """Shard sizes as runs in order: ``3 x 1,000 + 1 x 500`` (one term per change of size)."""
    runs: list[list[int]] = []
    for c in counts:
        if runs and runs[-1][1] == c:
            runs[-1][0] += 1
        else:
            runs.append([1, c])
    return " + ".join(f"{k:,} x {c:,}" for k, c in runs) or "none"


def presence_problem(m: Manifest, e: ShardEntry) -> str | None:
    """The shard missing or not its manifest size, in one line (cheap: no reading, no hashing); else None."""
    path = m.shard_path(e)
    if not os.path.isfile(path):
        return f"{e.name}: missing"
    if os.path.getsize(path) != e.bytes:
        return f"{e.name}: {os.path.getsize(path):,} bytes, manifest says {e.bytes:,}"
    return None


def presence_problems(m: Manifest) -> list[str]:
    """Shards that are missing or not their manifest size (cheap: no reading, no hashing)."""
    return [p for e in m.shards if (p := presence_problem(m, e))]


def summary(m: Manifest) -> str:
    """A human-readable summary of a set: identity, shape, sources, shards (their true counts), bytes,
    config, versions."""
    total = sum(s.bytes for s in m.shards)
    packed = m.raw.get("kind") == "packed" or m.config.get("kind") == "imagefolder"
    what = (f"packed dataset of {m.raw.get('images', m.count):,} images (`augment pack`), not a single image"
            if packed else "rendered from " + (f"{len(m.sources)} source images" if len(m.sources) != 1
                                               else "a single image"))
    lines = [f"id       {m.id}", f"kind     {what}",
             f"count    {m.count:,} patches of {m.size}x{m.size} {m.image_format}",
             f"seed     {m.seed}", f"shards   {len(m.shards):,} ({count_runs([s.count for s in m.shards])} samples), "
             f"{total:,} bytes ({total / 2 ** 20:.1f} MiB)"]
    brace = brace_pattern([s.name for s in m.shards])
    if brace:
        lines.append(f"wds      {brace}|{m.count}   (brace pattern|count: webdataset's urls, timm's wds split)")
    lines += [f"source   {s['name']} {s.get('width', '?')}x{s.get('height', '?')} sha256 {s['sha256']}"
              for s in m.sources]
    if m.raw.get("command"):
        lines.append(f"command  {m.raw['command']}")
    lines.append("config   " + json.dumps(m.config, sort_keys=True))
    if m.raw.get("versions"):
        lines.append("versions " + json.dumps(m.raw["versions"], sort_keys=True))
    return "\n".join(lines)
