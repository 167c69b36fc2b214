"""Render N source images into D augmented S x S patches, stored once as a frozen WebDataset shard set.

Sample ``i`` is a pure function of (recipe, sources, i): its random draws are counter-based (``uniforms``:
Philox4x64 keyed by the seed, counter 3i) and its source is ``i % N``. Shards hold fixed runs of
sample indices, so the bytes of every shard are independent of ``--workers`` and ``--shard-range``.

Folder layout while rendering (docs/shard-format.md): ``shard-NNNNNN.tar`` (complete shards only),
``.render/job.json`` (what is being rendered: refuses a different job), ``.render/shard-NNNNNN.json``
(size and sha256 of each complete shard: what a resumed run keeps), ``manifest.part-I-J.json`` (one per
``--shard-range`` job) and, last, ``manifest.json``.
"""
from __future__ import annotations

import functools
import glob
import json
import math
import multiprocessing
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field

import click
import cv2
import numpy as np

from augment import recipes
from augment.color import Jitter, JitterParams, apply_bgr, jitter_bgr, jitters_from_uniforms
from augment.files import describe_os_error, file_digest, remove_stale_temps, write_text_atomic
from augment.geometry import Crop, GeomParams, black_outside, crops_from_uniforms
from augment.lock import die_with_parent, folder_lock
from augment.manifest import JOB_DIR, MANIFEST, check_shard_name, read_manifest, write_manifest
from augment.shards import sample_key, shard_name, write_shard
from augment.sources import DEFAULT_MAX_PIXELS, SOURCE_CACHE_MIB, Source, SourceCache, load_all

PRESETS = {"imagenet": {"count": 1_281_167, "size": 256}, "cifar": {"count": 50_000, "size": 32}}
PNG_COMPRESSION = 6
SAMPLER = "philox4x64[key=seedsequence(seed)],counter=3*index,u53-v2"
MAX_SIZE = 4096  # patch side: a 100000-pixel side needs ~40 GB per warp (the paper: 32 and 256)
# Bytes per pixel-channel of an encoded patch (measured on natural-image patches, rounded up) and a
# sample's tar overhead (two headers, the JSON member, padding): the disk estimate a render checks.
BYTES_PER_VALUE = {"jpg": 0.2, "png": 0.8}
SAMPLE_OVERHEAD = 2048
DRAWS = 10  # per sample: 4 jitter factors, flip, angle, log-aspect, area, x, y


@dataclass(frozen=True)
class Recipe:
    """Everything that affects the bytes of a set (and nothing else): the manifest's ``config``."""

    count: int = PRESETS["imagenet"]["count"]
    size: int = PRESETS["imagenet"]["size"]
    n: int = 1
    seed: int = 0
    image_format: str = "jpg"
    quality: int = 95
    samples_per_shard: int = 1000
    geom: GeomParams = field(default_factory=GeomParams)
    jitter: JitterParams = field(default_factory=JitterParams)
    kind: str = "paper"  # the recipe, paper | released (augment/recipes.py)

    @property
    def n_shards(self) -> int:
        return math.ceil(self.count / self.samples_per_shard)

    def shard_span(self, si: int) -> tuple[int, int]:
        first = si * self.samples_per_shard
        return first, min(self.count, first + self.samples_per_shard)

    def to_config(self) -> dict:
        g, j = self.geom, self.jitter
        return {"count": self.count, "size": self.size, "n": self.n, "seed": self.seed,
                "image_format": self.image_format, "jpeg_quality": self.quality, "png_compression": PNG_COMPRESSION,
                "jpeg_subsampling": "4:2:0", "encoder": "opencv", "samples_per_shard": self.samples_per_shard,
                "source_of_sample": "index % n", "sampler": SAMPLER, "interpolation": "bilinear",
                "antialias": "area pyramid, step sqrt(2)",
                "min_area": g.min_area, "max_area": g.max_area, "aspect": g.aspect, "max_angle": g.max_angle,
                "flip_prob": g.flip_prob, "scale": g.scale, "rotation": g.rotation,
                "jitter": j.enabled, "brightness": j.brightness, "contrast": j.contrast,
                "saturation": j.saturation, "hue": j.hue, **recipes.config_extra(self)}

    @classmethod
    def from_config(cls, c: dict) -> "Recipe":
        geom = GeomParams(c["min_area"], c["max_area"], c["aspect"], c["max_angle"], c["flip_prob"], c["scale"],
                          c["rotation"])
        jit = JitterParams(c["brightness"], c["contrast"], c["saturation"], c["hue"], c["jitter"])
        kind, geom, jit = recipes.from_config(c, geom, jit)
        return cls(c["count"], c["size"], c["n"], c["seed"], c["image_format"], c["jpeg_quality"],
                   c["samples_per_shard"], geom, jit, kind)


@dataclass(frozen=True)
class RenderConfig:
    """One `render` invocation: the recipe plus what does not affect bytes (where, how fast, which part)."""

    image: str
    out: str
    recipe: Recipe = field(default_factory=Recipe)
    workers: int = 1
    shard_range: tuple[int, int] | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True
    command: str = ""
    source_cache_mib: int = SOURCE_CACHE_MIB  # pyramids kept per process (SourceCache)


def resolve_format(fmt: str, size: int) -> str:
    """``auto`` is lossless PNG for S <= 64 (CIFAR-sized, where JPEG artefacts are a large share of the
    signal and PNG is small), JPEG q95 above."""
    return ("png" if size <= 64 else "jpg") if fmt == "auto" else fmt


def encode(bgr: np.ndarray, fmt: str, quality: int) -> bytes:
    """uint8 BGR patch -> JPEG (libjpeg-turbo via OpenCV, 4:2:0) or PNG bytes."""
    if fmt == "jpg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {fmt} patch")
    return buf.tobytes()


@functools.lru_cache(maxsize=8)
def _philox_key(seed: int) -> np.ndarray:
    return np.random.SeedSequence(seed).generate_state(2, np.uint64)


def uniforms(seed: int, first: int, end: int) -> np.ndarray:
    """U[0, 1) draws of samples ``first`` .. ``end - 1``, one row of ``DRAWS`` per sample.

    Counter-based (Philox4x64, key from ``SeedSequence(seed)``, sample i owns counter blocks 3i .. 3i+2):
    row i is a pure function of (seed, i) whatever range it is drawn in, and a whole shard is drawn in
    one call instead of seeding a generator per sample (~20 us each, measured).
    """
    raw = np.random.Philox(key=_philox_key(seed), counter=3 * first).random_raw(12 * (end - first))
    return ((raw >> np.uint64(11)) * 2.0 ** -53).reshape(-1, 12)[:, :DRAWS]


class Renderer:
    """Holds the sources' pyramids (a bounded ``SourceCache``); renders samples and whole shards (one per
    worker task). ``cache_bytes`` None: every pyramid is kept."""

    def __init__(self, recipe: Recipe, sources: list[Source], cache_bytes: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.recipe = recipe
        self.names = [s.name for s in sources]
        self.pyramids = SourceCache(sources, recipe.size, cache_bytes, max_pixels)
        self._names_json = [json.dumps(n) for n in self.names]
        self._wh = np.array([(s.width, s.height) for s in sources], float)

    def params(self, first: int, end: int) -> list[tuple[int, Jitter, Crop]]:
        """(source, jitter, crop) of samples ``first`` .. ``end - 1``, drawn vectorised over the range.

        Draw order per sample: four jitter factors, then flip, angle, log-aspect, area, x, y (ablations
        keep every draw, so an ablated set shows the same crops as the full set).
        """
        r = self.recipe
        u = uniforms(r.seed, first, end)
        src = np.arange(first, end) % len(self.pyramids)
        W, H = self._wh[src, 0], self._wh[src, 1]
        if not recipes.is_paper(r):  # a named variant: one Plan per sample
            x = recipes.extra_uniforms(_philox_key(r.seed), first, end)
            return list(zip(src.tolist(), recipes.plans(r, u, x, W, H)))
        jit = jitters_from_uniforms(u[:, :4], r.jitter).tolist()
        cols = [c.tolist() for c in crops_from_uniforms(u[:, 4:], W, H, r.geom)]
        return [(s, Jitter(*j), Crop(*c)) for s, j, c in zip(src.tolist(), jit, zip(*cols))]

    def render(self, index: int, src: int, *how) -> dict[str, bytes]:
        """Members of sample ``index`` from its parameters (jitter and crop, or a variant's Plan): the
        encoded patch and the parameters as JSON."""
        if len(how) == 1:
            return self._render_plan(index, src, how[0])
        jit, crop = how
        r = self.recipe
        rgba, level = self.pyramids[src].warp(crop, r.size)
        data = encode(apply_bgr(rgba, jit), r.image_format, r.quality)
        # Written directly (keys sorted, compact): byte-identical to json.dumps(sort_keys=True), ~5x faster.
        meta = (f'{{"angle":{crop.angle!r},"brightness":{jit.brightness!r},"contrast":{jit.contrast!r},'
                f'"crop":{{"cx":{crop.cx!r},"cy":{crop.cy!r},"h":{crop.h!r},"w":{crop.w!r}}},'
                f'"fallback":{"true" if crop.fallback else "false"},"flip":{"true" if crop.flip else "false"},'
                f'"hue":{jit.hue!r},"index":{index},"level":{level},"saturation":{jit.saturation!r},'
                f'"source":{self._names_json[src]},"source_index":{src}}}')
        return {r.image_format: data, "json": meta.encode()}

    def _render_plan(self, index: int, src: int, plan: recipes.Plan) -> dict[str, bytes]:
        r = self.recipe
        if plan.crop is not None:
            rgba, level = self.pyramids[src].warp(plan.crop, r.size)
        else:
            rgba, level = self.pyramids[src].warp_map(plan.matrix, r.size, recipes.INTERPOLATION[r.kind] == "bicubic")
            rgba = black_outside(rgba, plan.inner, recipes.resized_side(r.size))  # before the jitter, as released
        jit = plan.jitter if plan.applied else Jitter(1.0, 1.0, 1.0, 0.0)
        data = encode(jitter_bgr(rgba, jit, plan.order, r.jitter.hue_space), r.image_format, r.quality)
        meta = dict(plan.meta, index=index, level=level, source=self.names[src], source_index=src)
        return {r.image_format: data, "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()}

    def sample(self, index: int) -> dict[str, bytes]:
        """Members of sample ``index`` (the same bytes a shard holds)."""
        return self.render(index, *self.params(index, index + 1)[0])

    def shard(self, out: str, si: int) -> dict:
        """Write shard ``si`` atomically, then its sidecar; returns the manifest entry."""
        first, end = self.recipe.shard_span(si)
        params = self.params(first, end)
        if self.pyramids.holds_all:  # stream: nothing to reorder
            members = (self.render(i, *p) for i, p in zip(range(first, end), params))
        else:  # grouped by source, so that each missing pyramid is built once for this shard
            members: list = [None] * len(params)
            for k in self.pyramids.order([p[0] for p in params]):
                members[k] = self.render(first + k, *params[k])
        info = write_shard(os.path.join(out, shard_name(si)), first,
                           ((sample_key(first + k), m) for k, m in enumerate(members)))
        _write_json(os.path.join(out, JOB_DIR, shard_name(si).replace(".tar", ".json")), info.to_json())
        return info.to_json()


def _write_json(path: str, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def versions() -> dict:
    """Library versions that can change bytes (encoder included), recorded in every manifest."""
    import platform
    from importlib import metadata

    import PIL

    build = cv2.getBuildInformation().splitlines()
    lib = {k: next((ln.split(":", 1)[1].strip() for ln in build if ln.strip().startswith(k + ":")), "unknown")
           for k in ("JPEG", "PNG")}
    try:
        pkg = metadata.version("single-image-ssl")
    except metadata.PackageNotFoundError:
        pkg = "unknown"
    return {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
            "pillow": PIL.__version__, "pillow_simd": ".post" in PIL.__version__, "jpeg_encoder":
            f"OpenCV imencode, {lib['JPEG']}", "png_encoder": f"OpenCV imencode, {lib['PNG']}",
            "single-image-ssl": pkg}


def manifest_data(job: dict, shards: list[dict], command: str) -> dict:
    """The manifest of a complete set; one function for render and merge, so both write the same."""
    c = job["config"]
    return {"count": c["count"], "size": c["size"], "image_format": c["image_format"], "seed": c["seed"],
            "samples_per_shard": c["samples_per_shard"], "config": c, "sources": job["sources"],
            "shards": sorted(shards, key=lambda s: s["first"]), "versions": versions(), "command": command}


def check(cfg: RenderConfig) -> None:
    """Fail fast on impossible options, before any source is read or file written."""
    r, g, j = cfg.recipe, cfg.recipe.geom, cfg.recipe.jitter
    for name, v in (("--n", r.n), ("--count", r.count), ("--size", r.size), ("--workers", cfg.workers),
                    ("--samples-per-shard", r.samples_per_shard), ("--max-pixels", cfg.max_pixels)):
        if v <= 0:
            raise click.ClickException(f"{name} must be a positive integer (got {v})")
    if r.size > MAX_SIZE:
        raise click.ClickException(f"--size {r.size} is larger than {MAX_SIZE} (a patch that size needs about "
                                   f"{4 * r.size * r.size / 2 ** 30:.0f} GiB per warp); pass a smaller --size")
    if r.n > r.count:
        raise click.ClickException(f"--count {r.count} is smaller than --n {r.n}: every source needs a patch")
    if r.seed < 0:
        raise click.ClickException(f"--seed must be >= 0 (got {r.seed})")
    if r.image_format not in ("jpg", "png") or not 1 <= r.quality <= 100:
        raise click.ClickException(f"--format must be jpg/png/auto and --quality in 1..100 (got {r.quality})")
    if not 0 < g.min_area <= g.max_area <= 1:
        raise click.ClickException(f"need 0 < --min-area <= --max-area <= 1 (got {g.min_area}, {g.max_area})")
    if not 0 < g.aspect <= 1 or not 0 <= g.max_angle < 90 or not 0 <= g.flip_prob <= 1:
        raise click.ClickException("need 0 < --aspect <= 1, 0 <= --max-angle < 90, 0 <= --flip <= 1")
    if min(j.brightness, j.contrast, j.saturation) < 0 or max(j.brightness, j.contrast, j.saturation) > 1 \
            or not 0 <= j.hue <= 0.5:
        raise click.ClickException("jitter half-widths must be in [0, 1] (brightness/contrast/saturation), "
                                   "[0, 0.5] (hue)")
    recipes.check(r)
    if cfg.shard_range is not None:
        i, k = cfg.shard_range
        if not 0 <= i < k <= r.n_shards:
            raise click.ClickException(f"--shard-range {i}:{k} is outside 0:{r.n_shards} (the set has "
                                       f"{r.n_shards} shards of {r.samples_per_shard})")


def estimate_bytes(recipe: Recipe, samples: int) -> int:
    """About how many bytes ``samples`` patches of ``recipe`` take on disk (shards and bookkeeping)."""
    per = recipe.size * recipe.size * 3 * BYTES_PER_VALUE[recipe.image_format] + SAMPLE_OVERHEAD
    return int(samples * per) + 1024 + 4096 * math.ceil(samples / recipe.samples_per_shard)


def check_space(cfg: RenderConfig) -> int:
    """Refuse, in one line, a render whose estimated size exceeds the free space; returns the estimate.

    Checked before anything is read or written: a too-large ``--count`` would otherwise fill the disk
    (or seem to hang) long before it failed.
    """
    r = cfg.recipe
    lo, hi = cfg.shard_range or (0, r.n_shards)
    samples = min(r.count, hi * r.samples_per_shard) - lo * r.samples_per_shard
    need = estimate_bytes(r, samples)
    folder = os.path.abspath(cfg.out)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return need  # no answer: the write itself reports a full disk
    if need > free:
        raise click.ClickException(f"--out {cfg.out}: {samples:,} patches need about {need / 2 ** 30:,.1f} GiB "
                                   f"but {folder} has {free / 2 ** 30:,.1f} GiB free; lower --count or --size, "
                                   f"or write elsewhere")
    return need


def _refusal(out: str, theirs: dict, ours: dict) -> click.ClickException:
    keys = sorted(k for k in set(theirs["config"]) | set(ours["config"])
                  if theirs["config"].get(k) != ours["config"].get(k))
    if [s["sha256"] for s in theirs["sources"]] != [s["sha256"] for s in ours["sources"]]:
        keys.append("sources")
    return click.ClickException(f"{out} holds a different render (differs in: {', '.join(keys)}); "
                                f"use a new --out or delete that folder")


def check_out(out: str, job: dict) -> None:
    """Refuse ``out`` when it holds anything but this job (another render, another set, other files)."""
    job_path = os.path.join(out, JOB_DIR, "job.json")
    if os.path.isfile(job_path):
        try:
            with open(job_path) as f:
                theirs = json.load(f)
            differs = theirs["config"] != job["config"] or theirs["sources"] != job["sources"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise click.ClickException(f"{job_path}: unreadable render bookkeeping; delete {out} or use a new "
                                       f"--out") from None
        if differs:
            raise _refusal(out, theirs, job)
        return
    if os.path.isfile(os.path.join(out, MANIFEST)):
        m = read_manifest(out)
        theirs = {"config": m.config, "sources": m.sources}
        if m.config != job["config"] or [s["sha256"] for s in m.sources] != [s["sha256"] for s in job["sources"]]:
            raise _refusal(out, theirs, job)
    elif os.path.isdir(out) and set(os.listdir(out)) - {JOB_DIR}:
        raise click.ClickException(f"--out {out} is not empty and holds no render; use an empty or new folder")


def prepare_out(out: str, job: dict) -> None:
    """Check ``out`` again (under the lock: another run may have just started) and write the job file."""
    check_out(out, job)
    job_path = os.path.join(out, JOB_DIR, "job.json")
    if not os.path.isfile(job_path):
        _write_json(job_path, job)


def _undo_start(out: str, created_dir: bool, created_job: bool) -> None:
    """Remove what a failed start made: nothing but this run's bookkeeping (never a complete shard)."""
    jdir = os.path.join(out, JOB_DIR)
    if created_job:
        for p in glob.glob(os.path.join(jdir, "*")):
            os.remove(p)
        if os.path.isdir(jdir) and not os.listdir(jdir):
            os.rmdir(jdir)
    if created_dir and os.path.isdir(out) and not os.listdir(out):
        os.rmdir(out)


def shard_complete(out: str, recipe: Recipe, si: int) -> dict | None:
    """The sidecar of shard ``si`` if the tar on disk matches it (size, then sha256), else None."""
    tar = os.path.join(out, shard_name(si))
    side = os.path.join(out, JOB_DIR, shard_name(si).replace(".tar", ".json"))
    if not (os.path.isfile(tar) and os.path.isfile(side)):
        return None
    try:
        with open(side) as f:
            info = json.load(f)
    except (ValueError, RecursionError):
        return None
    first, end = recipe.shard_span(si)
    if (info.get("first"), info.get("count")) != (first, end - first) or os.path.getsize(tar) != info.get("bytes"):
        return None
    return info if file_digest(tar) == info.get("sha256") else None


_RENDERER: Renderer | None = None
_OUT = ""
_PARENT: int | None = None  # in a pool worker: the render's pid


def _init_worker(parent: int | None = None) -> None:
    global _PARENT
    _PARENT = parent
    cv2.setNumThreads(1)  # one core per worker; OpenCV's own threads would fight the pool
    if parent is not None:
        # Ctrl-C reaches the whole process group: the parent alone reports it, in one line.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        die_with_parent(parent)


def _task(si: int) -> dict:
    if _PARENT is not None and os.getppid() != _PARENT:  # orphaned (no PR_SET_PDEATHSIG here): stop
        os._exit(1)
    return _RENDERER.shard(_OUT, si)


def run_shards(renderer: Renderer, out: str, todo: list[int], workers: int, progress: bool) -> list[dict]:
    """Render shards ``todo`` (whole shards per task) with a progress bar over samples."""
    global _RENDERER, _OUT
    from tqdm import tqdm

    r = renderer.recipe
    total = sum(r.shard_span(si)[1] - r.shard_span(si)[0] for si in todo)
    done: list[dict] = []
    bar = tqdm(total=total, unit="patch", unit_scale=True, smoothing=0.1, disable=not progress,
               desc=f"render {os.path.basename(out.rstrip('/'))}", file=sys.stderr)
    with bar:
        if workers == 1 or len(todo) == 1:
            _init_worker()
            results = (renderer.shard(out, si) for si in todo)
            for info in results:
                done.append(info)
                bar.update(info["count"])
            return done
        _RENDERER, _OUT = renderer, out  # inherited by the forked workers, pyramids shared copy-on-write
        # Stop OpenCV's thread pool (it built the pyramids) before forking: a child inherits the pool's
        # locks but not its threads, and its first cv2 call could wait forever (seen: both workers stuck
        # on a futex at 0 CPU s). setNumThreads(1) joins the pool's threads.
        cv2.setNumThreads(1)
        try:
            with multiprocessing.get_context("fork").Pool(min(workers, len(todo)), _init_worker,
                                                              (os.getpid(),)) as pool:
                for info in pool.imap_unordered(_task, todo):
                    done.append(info)
                    bar.update(info["count"])
        finally:
            _RENDERER = None
    return done


def piece_name(i: int, k: int) -> str:
    return f"manifest.part-{i:06d}-{k:06d}.json"


def render(cfg: RenderConfig) -> dict:
    """Render (or resume) the set described by ``cfg``; returns a summary dict.

    Writes ``manifest.json`` when the whole set is complete, else (with --shard-range) a manifest piece
    for ``merge``. Sources are decoded and every option checked before anything is written.
    """
    check(cfg)
    need = check_space(cfg)
    if cfg.progress:
        click.echo(f"render {cfg.out}: about {need / 2 ** 20:,.1f} MiB on disk", err=True)
    r = cfg.recipe
    budget = cfg.source_cache_mib << 20
    sources = load_all(cfg.image, r.n, r.seed, cfg.max_pixels, budget)
    job = {"config": r.to_config(), "sources": [s.record() for s in sources]}
    out, jdir = cfg.out, os.path.join(cfg.out, JOB_DIR)
    check_out(out, job)  # a foreign folder is refused before anything is created in it
    created_dir = not os.path.exists(out)
    lo, hi = cfg.shard_range or (0, r.n_shards)
    with folder_lock(jdir, f"render into {out}"):
        created_job = not os.path.isfile(os.path.join(jdir, "job.json"))
        try:
            prepare_out(out, job)
            # Under the lock no other render writes here: temporary files are a dead run's.
            for stale in glob.glob(os.path.join(out, "*.partial")):  # older versions' names
                os.remove(stale)
            remove_stale_temps(out, locked=True)
            remove_stale_temps(jdir, locked=True)
            kept = {si: info for si in range(lo, hi) if (info := shard_complete(out, r, si))}
            todo = [si for si in range(lo, hi) if si not in kept]
            if todo:
                renderer = Renderer(r, sources, budget, cfg.max_pixels)
                del sources  # the pyramids are what the workers need
                start = time.monotonic()
                try:
                    kept.update((d["first"] // r.samples_per_shard, d) for d in
                                run_shards(renderer, out, todo, cfg.workers, cfg.progress))
                except KeyboardInterrupt:
                    raise _interrupted(cfg, lo, hi) from None
                seconds = time.monotonic() - start
            shards = [kept[si] for si in range(lo, hi)]
            if (lo, hi) == (0, r.n_shards):
                set_id = write_manifest(out, manifest_data(job, shards, cfg.command))
                written = MANIFEST
            else:
                set_id = None
                written = piece_name(lo, hi)
                _write_json(os.path.join(out, written), {"job": job, "range": [lo, hi], "n_shards": r.n_shards,
                                                         "shards": shards, "command": cfg.command})
        except OSError as e:
            if created_job and not any(os.path.isfile(os.path.join(out, shard_name(s))) for s in range(lo, hi)):
                _undo_start(out, created_dir, created_job)
            why = describe_os_error(e, e.filename or os.path.join(out, MANIFEST))
            raise click.ClickException(f"--out {out}: cannot write; {why}; then run the same command again to "
                                       f"resume (complete shards are kept)") from None
    rendered = sum(r.shard_span(si)[1] - r.shard_span(si)[0] for si in todo)
    rate = rendered / seconds if todo and seconds > 0 else 0.0
    return {"out": out, "id": set_id, "written": written, "rendered": len(todo), "kept": hi - lo - len(todo),
            "shards": hi - lo, "patches": rendered, "seconds": seconds if todo else 0.0, "rate": rate}


class Interrupted(click.ClickException):
    """Ctrl-C during a render: one line, exit 130 (the shell's code for SIGINT)."""

    exit_code = 130


def _interrupted(cfg: RenderConfig, lo: int, hi: int) -> Interrupted:
    """The one line an interrupted render prints: what is finished, and the command that resumes.

    Called under the set's lock once the pool has stopped its workers (SIGTERM: they leave their
    temporary files), so every temporary file is stale and removed now rather than at the next run.
    """
    remove_stale_temps(cfg.out, locked=True)
    remove_stale_temps(os.path.join(cfg.out, JOB_DIR), locked=True)
    done = sum(1 for si in range(lo, hi) if shard_complete(cfg.out, cfg.recipe, si))
    return Interrupted(f"render into {cfg.out} interrupted: {done} of {hi - lo} shards are complete and kept; "
                       f"resume with: {cfg.command or 'the same command'}")


def merge(out: str) -> str:
    """Combine ``manifest.part-*.json`` pieces in ``out`` into ``manifest.json``; returns the set's id."""
    pieces = sorted(glob.glob(os.path.join(out, "manifest.part-*.json")))
    if not pieces:
        raise click.ClickException(f"{out}: no manifest.part-*.json pieces to merge; render with --shard-range "
                                   f"into this folder first")
    with folder_lock(os.path.join(out, JOB_DIR), f"merge {out}"):
        job, by_index, n, command = _combine(out, pieces)
        missing = [si for si in range(n) if si not in by_index]
        if missing:
            spans = ", ".join(shard_name(si) for si in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise click.ClickException(f"{out}: {len(missing)} of {n} shards have no piece ({spans}); render "
                                       f"their --shard-range, then merge again")
        for si, s in sorted(by_index.items()):
            path = os.path.join(out, s["name"])
            if not os.path.isfile(path) or os.path.getsize(path) != s["bytes"]:
                raise click.ClickException(f"{path}: missing or not the size its piece records; re-render its "
                                           f"--shard-range, then merge again")
        return write_manifest(out, manifest_data(job, [by_index[si] for si in range(n)], command))


def _combine(out: str, pieces: list[str]) -> tuple[dict, dict[int, dict], int, str]:
    """(job, shard entries by index, shard count, command) of the pieces; refuses malformed pieces,
    pieces of different jobs and shard names outside ``out``."""
    loaded = []
    for p in pieces:
        try:
            with open(p) as f:
                piece = json.load(f)
            per = int(piece["job"]["config"]["samples_per_shard"])
            for s in piece["shards"]:
                check_shard_name(out, s["name"], p)
                int(s["bytes"])
            loaded.append((p, piece, {int(s["first"]) // per: s for s in piece["shards"]}, int(piece["n_shards"])))
        except (ValueError, KeyError, TypeError, ZeroDivisionError, RecursionError) as e:
            raise click.ClickException(f"{p}: unreadable piece ({type(e).__name__}: {e}); re-run that "
                                       f"--shard-range job") from None
    job, by_index = loaded[0][1]["job"], {}
    for p, piece, entries, _ in loaded:
        if piece["job"] != job:
            raise _refusal(f"{out} ({os.path.basename(p)})", piece["job"], job)
        by_index.update(entries)
    return job, by_index, loaded[0][3], _strip_range(loaded[0][1].get("command", ""))


def _strip_range(command: str) -> str:
    """The single-machine command of a --shard-range job (its range removed)."""
    words = shlex.split(command)
    keep = []
    skip = False
    for w in words:
        if skip:
            skip = False
        elif w == "--shard-range":
            skip = True
        elif not w.startswith("--shard-range="):
            keep.append(w)
    return shlex.join(keep)


def canonical_command(image: str, recipe: Recipe, out: str, workers: int = 1) -> str:
    """A command line that reproduces ``recipe`` (every byte-affecting option spelled out)."""
    g, j = recipe.geom, recipe.jitter
    words = ["python", "-m", "augment", "render", "--image", image, "--n", str(recipe.n), "--count",
             str(recipe.count), "--size", str(recipe.size), "--seed", str(recipe.seed), "--format",
             recipe.image_format, "--quality", str(recipe.quality), "--samples-per-shard",
             str(recipe.samples_per_shard)]
    defaults_g, defaults_j = recipes.number_defaults(recipe)
    for opt, v, d in (("--min-area", g.min_area, defaults_g.min_area), ("--max-area", g.max_area, defaults_g.max_area),
                      ("--aspect", g.aspect, defaults_g.aspect), ("--max-angle", g.max_angle, defaults_g.max_angle),
                      ("--flip", g.flip_prob, defaults_g.flip_prob),
                      ("--brightness", j.brightness, defaults_j.brightness),
                      ("--contrast", j.contrast, defaults_j.contrast),
                      ("--saturation", j.saturation, defaults_j.saturation), ("--hue", j.hue, defaults_j.hue)):
        if v != d:
            words += [opt, repr(v)]
    words += recipes.command_words(recipe)
    words += [f for f, on in (("--no-scale", not g.scale), ("--no-rotation", not g.rotation),
                              ("--no-jitter", not j.enabled)) if on]
    return shlex.join(words + ["--out", out])
