"""Check a shard set against its manifest (`verify`), re-render samples, and summarise it (`info`)."""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field

import numpy as np

from augment.manifest import Manifest, ShardEntry, read_manifest, identity_problem
from augment.shards import sample_key, sha256_file


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
    if sha256_file(path) != entry.sha256:
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
    m = read_manifest(cfg.folder)
    rep = Report(shards=len(m.shards), samples=sum(s.count for s in m.shards))
    try:  # the id check lives in manifest.py (sharing); older copies of it lack the function
        from augment.manifest import identity_problem
    except ImportError:
        identity_problem = None
    if identity_problem and (bad_id := identity_problem(m)):
        rep.problems.append(f"manifest.json: {bad_id}")
        rep.lines.append(rep.problems[-1])
    if rep.samples != m.count:
        rep.problems.append(f"manifest: shards hold {rep.samples} samples but count is {m.count}")
    identity = identity_problem(m)  # a hand-edited manifest: its id no longer proves its bytes (issue 7)
    if identity:
        rep.problems.append(f"manifest: {identity}")
    for entry in m.shards:
        problem = check_shard(m, entry)
        if problem:
            rep.problems.append(problem)
            rep.lines.append(problem)
    listed = {s.name for s in m.shards}
    extra = sorted(f for f in os.listdir(cfg.folder) if f.endswith(".tar") and f not in listed)
    rep.lines += [f"{f}: not in the manifest (ignored)" for f in extra]
    if cfg.rerender > 0 and not rep.problems:
        bad = rerender(m, cfg.rerender, cfg.sources, cfg.seed)
        rep.problems += bad
        rep.lines += bad
    return rep


def summary(folder: str) -> str:
    """A human-readable summary of a set: identity, shape, sources, shards, bytes, config, versions."""
    m = read_manifest(folder)
    total = sum(s.bytes for s in m.shards)
    lines = [f"id       {m.id}", f"count    {m.count:,} patches of {m.size}x{m.size} {m.image_format}",
             f"seed     {m.seed}", f"shards   {len(m.shards)} ({m.raw.get('samples_per_shard', '?')} samples each), "
             f"{total:,} bytes ({total / 2 ** 20:.1f} MiB)"]
    lines += [f"source   {s['name']} {s.get('width', '?')}x{s.get('height', '?')} sha256 {s['sha256']}"
              for s in m.sources]
    if m.raw.get("command"):
        lines.append(f"command  {m.raw['command']}")
    lines.append("config   " + json.dumps(m.config, sort_keys=True))
    if m.raw.get("versions"):
        lines.append("versions " + json.dumps(m.raw["versions"], sort_keys=True))
    return "\n".join(lines)
