"""Renderer speed: patches/s on one core at S = 256 (JPEG q95) and S = 32 beside the JPEG-encode-only
floor of 256 x 256 crops of the same image (same run), 1 vs 2 workers, peak RSS at two values of D."""
from __future__ import annotations

import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

from augment.color import apply_bgr, bgr_matrix
from augment.geometry import _affine
from augment.render import Recipe, RenderConfig, Renderer, encode, render
from augment.sources import Source, load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the paper's images: the folder every command reads them from (SOURCE_IMAGE_DIR), else the shared copy
IMAGE_A = os.path.join(os.environ.get("SOURCE_IMAGE_DIR") or os.path.join(ROOT, "..", "shared", "data", "images"),
                       "ameyoko.jpg")


# A section measured on anything but the paper's image says so with this mark; tests/bench/run.py then
# refuses to write it into the committed docs.
STAND_IN = "STAND-IN INPUT"


def source() -> tuple[Source, str]:
    """Image A when the shared data is present, else a synthetic textured image of the same size (in a
    temporary folder the caller removes)."""
    if os.path.isfile(IMAGE_A):
        return load("ameyoko.jpg", IMAGE_A), IMAGE_A
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1920, 0:2560]
    img = (np.stack([xx % 251, yy % 241, (xx * yy) % 239], -1) + rng.integers(0, 40, (1920, 2560, 3))).clip(0, 255)
    path = os.path.join(tempfile.mkdtemp(), "synthetic.png")
    cv2.imwrite(path, img.astype(np.uint8))
    return load("synthetic.png", path), path


def cpu_per_item(fn, items, repeats: int) -> float:
    """Min over ``repeats`` of CPU seconds per item of ``fn(items)`` (CPU time: the machine is shared)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn(items)
        best = min(best, (time.process_time() - t) / len(items))
    return best


def floor_round(rgb: np.ndarray, n: int, size: int, fmt: str):
    """One timed round of the encode-only floor: the renderer's own encoder on ``n`` random ``size`` crops
    of the source (cut before timing); returns CPU seconds per encode."""
    rng = np.random.default_rng(0)
    H, W = rgb.shape[:2]
    crops = [np.ascontiguousarray(rgb[y:y + size, x:x + size, ::-1])
             for y, x in zip(rng.integers(0, H - size, n), rng.integers(0, W - size, n))]
    return lambda: cpu_per_item(lambda cs: [encode(c, fmt, 95) for c in cs], crops, 1)


def render_round(src: Source, size: int, fmt: str, n: int):
    """One timed round of the shard path (vectorised draws, warp, jitter, encode, JSON; no tar) over ``n``
    samples; returns CPU seconds per patch."""
    r = Renderer(Recipe(count=10 ** 9, size=size, image_format=fmt), [src])
    return lambda: cpu_per_item(lambda idx: [r.render(i, *p) for i, p in zip(idx, r.params(idx[0], idx[-1] + 1))],
                                range(n), 1)


def paired(src: Source, size: int, fmt: str, n: int, repeats: int) -> tuple[float, float]:
    """(patches/s, floor encodes/s) on one core: min CPU time of each over ``repeats`` alternating rounds,
    so that both see the same machine load."""
    cv2.setNumThreads(1)
    rounds = (render_round(src, size, fmt, n), floor_round(src.rgb, n, size, fmt))
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for k, f in enumerate(rounds):
            best[k] = min(best[k], f())
    return 1 / best[0], 1 / best[1]


FLAGS, BORDER = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, cv2.BORDER_REPLICATE


class InSitu:
    """The S = 256 shard path's stages for ``n`` samples, callable one sample at a time, as the renderer
    runs them (its regions, its reused buffer), so that each can be timed with the stages before it."""

    def __init__(self, src: Source, n: int, size: int = 256):
        self.size = size
        r = Renderer(Recipe(count=10 ** 9, size=size, image_format="jpg"), [src])
        self.pyr = r.pyramids[0]
        self.items = [(c, j) for _, j, c in r.params(0, n)]
        self.cuts = [_region(self.pyr, c, size) for c, _ in self.items]
        self.scratch = np.empty(max(v.size for v, _ in self.cuts), np.uint8)
        self.three = [cv2.cvtColor(lv, cv2.COLOR_RGBA2BGR) for lv in self.pyr.levels]
        self.out = [np.empty((size, size, c), np.uint8) for c in (4, 3, 3)]

    def copy(self, view: np.ndarray) -> np.ndarray:
        """Into one reused buffer, as the renderer does (a fresh array per patch page-faults)."""
        roi = self.scratch[:view.size].reshape(view.shape)
        np.copyto(roi, view)
        return roi

    def warp(self, i: int, interp: int = FLAGS) -> np.ndarray:
        view, m = self.cuts[i]
        return cv2.warpAffine(self.copy(view), m, (self.size, self.size), flags=interp, borderMode=BORDER)

    def rgb(self, i: int) -> np.ndarray:
        return cv2.cvtColor(self.warp(i), cv2.COLOR_RGBA2RGB)

    def jittered(self, i: int) -> np.ndarray:
        x = self.rgb(i)
        return cv2.transform(x, bgr_matrix(self.items[i][1], cv2.mean(x)))

    def reference(self, i: int) -> np.ndarray:
        """The renderer's own jittered patch (``Pyramid.warp`` + ``apply_bgr``)."""
        c, j = self.items[i]
        return apply_bgr(self.pyr.warp(c, self.size)[0], j)

    def warp3(self, i: int) -> np.ndarray:
        """The same warp on 3-channel (BGR) levels: the RGBA -> RGB pass is gone."""
        (c, j), (view, m) = self.items[i], self.cuts[i]
        k = self.pyr.choose(c, self.size)
        y0, x0 = _offset(view, self.pyr.levels[k])
        h, w = view.shape[:2]
        x = cv2.warpAffine(self.copy(self.three[k][y0:y0 + h, x0:x0 + w]), m, (self.size, self.size), flags=FLAGS,
                           borderMode=BORDER)
        b, g, r, _ = cv2.mean(x)
        return cv2.transform(x, bgr_matrix(j, (r, g, b))[:, [2, 1, 0, 3]])

    def prealloc(self, i: int) -> np.ndarray:
        """The same calls writing into arrays allocated once."""
        (view, m), (b4, b3, bo) = self.cuts[i], self.out
        x = cv2.cvtColor(cv2.warpAffine(self.copy(view), m, (self.size, self.size), dst=b4, flags=FLAGS,
                                        borderMode=BORDER), cv2.COLOR_RGBA2RGB, dst=b3)
        return cv2.transform(x, bgr_matrix(self.items[i][1], cv2.mean(x)), dst=bo)

    def in_place(self, i: int) -> np.ndarray:
        """The warp reading the level itself, no region copy."""
        view, m = self.cuts[i]
        return cv2.warpAffine(view, m, (self.size, self.size), flags=FLAGS, borderMode=BORDER)


def _region(pyr, crop, size: int):
    """(region view, 2 x 3 map into it) as ``Pyramid._resample`` cuts them (bilinear reach)."""
    k = pyr.choose(crop, size)
    sx, sy = pyr.scales[k]
    a00, a01, a02, a10, a11, a12 = _affine(crop, size, sx, sy)
    a02, a12 = a02 - 0.5, a12 - 0.5
    xs = [a02 - 0.5 * (a00 + a01) + a00 * u + a01 * v for u in (0, size) for v in (0, size)]
    ys = [a12 - 0.5 * (a10 + a11) + a10 * u + a11 * v for u in (0, size) for v in (0, size)]
    lv = pyr.levels[k]
    x0, y0 = max(math.floor(min(xs)) - 1, 0), max(math.floor(min(ys)) - 1, 0)
    x1, y1 = min(math.ceil(max(xs)) + 2, lv.shape[1]), min(math.ceil(max(ys)) + 2, lv.shape[0])
    return lv[y0:y1, x0:x1], np.array([[a00, a01, a02 - x0], [a10, a11, a12 - y0]])


def stages(src: Source, n: int, reps: int, floor: float) -> list[str]:
    """Markdown: CPU µs per patch of the S = 256 shard path built up one stage at a time (each row runs
    every stage above it, in situ, so caches behave as in a render), and of the alternatives tried."""
    cv2.setNumThreads(1)
    p = InSitu(src, n)
    chain = [("region copy (4 channels)", lambda i: p.copy(p.cuts[i][0])),
             ("+ bilinear warp, 4 channels (`cv2.warpAffine`)", p.warp),
             ("+ RGBA -> RGB", p.rgb),
             ("+ patch mean", lambda i: cv2.mean(p.rgb(i))),
             ("+ colour map, one 3 x 4 transform", p.jittered),
             ("+ JPEG q95 encode", lambda i: encode(p.jittered(i), "jpg", 95))]
    best = [_best_us(fn, n, reps) for _, fn in chain]
    full = 1e6 * min(render_round(src, 256, "jpg", n)() for _ in range(reps))
    # (name, call, the stage it replaces, the bytes it must equal)
    alts = [("3-channel levels and warp (no RGBA -> RGB)", p.warp3, 4, p.reference),
            ("output arrays allocated once (`dst=`)", p.prealloc, 4, p.reference),
            ("warp reading the level in place (no region copy)", p.in_place, 1, p.warp),
            ("nearest-neighbour warp (not the paper's resampling)",
             lambda i: p.warp(i, cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP), 1, p.warp)]
    out = ["", "Where the S = 256 render's time goes (one core, CPU µs per patch, each row in situ with every "
           "stage above it; min of the same rounds):", "", "| stages | µs/patch | this stage |", "|---|---:|---:|",
           *[f"| {name} | {us:,.0f} | {us - prev:+,.0f} |" for (name, _), us, prev in zip(chain, best, [0.0, *best])],
           f"| the shard path (`Renderer.render`: + draws, JSON) | {full:,.0f} | {full - best[-1]:+,.0f} |",
           "", "Alternatives measured (same rounds):", "",
           "| alternative | µs/patch | replaces | same bytes |", "|---|---:|---:|---|"]
    for name, fn, stage, want in alts:
        same = all(np.array_equal(fn(i), want(i)) for i in range(min(n, 200)))
        out.append(f"| {name} | {_best_us(fn, n, reps):,.0f} | {best[stage]:,.0f} | {'yes' if same else 'no'} |")
    kept = best[1] + best[5] - best[4]   # region copy + warp + encode
    out += ["", f"Ceiling: were every stage but the region copy, the bilinear warp and the encode free, the render "
            f"would take {kept:,.0f} µs, {1e6 / floor / kept:.2f} of the floor ({1e6 / floor:,.0f} µs); the "
            f"paper's recipe at 0.55 of the floor leaves {1e6 / floor / 0.55 - kept:,.0f} µs for the rest (measured "
            f"now: {full - kept:,.0f} µs)."]
    return out


def _offset(view: np.ndarray, level: np.ndarray) -> tuple[int, int]:
    """(row, column) of a view's first pixel inside ``level``."""
    d = view.__array_interface__["data"][0] - level.__array_interface__["data"][0]
    return d // level.strides[0], (d % level.strides[0]) // level.strides[1]


def _best_us(fn, n: int, reps: int) -> float:
    """Min over ``reps`` rounds of CPU µs per call of ``fn(i)`` for i < n."""
    return 1e6 * min(cpu_per_item(lambda idx: [fn(i) for i in idx], range(n), 1) for _ in range(reps))


def end_to_end(image: str, count: int, workers: int) -> tuple[float, float]:
    """(patches/s wall clock, CPU ms per patch over all processes) of a full S = 256 `render` (tar + fsync)."""
    out = tempfile.mkdtemp()
    try:
        cfg = RenderConfig(image, os.path.join(out, "s"), Recipe(count=count, size=256, samples_per_shard=count // 8),
                           workers=workers, progress=False)
        t, c = time.perf_counter(), _cpu_all()
        render(cfg)
        return count / (time.perf_counter() - t), (_cpu_all() - c) / count * 1e3
    finally:
        shutil.rmtree(out)


def _cpu_all() -> float:
    """CPU seconds of this process plus its finished children (the pool's workers)."""
    return sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
               for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def peak_rss(image: str, count: int) -> tuple[float, float]:
    """Peak RSS (MiB) of the main process and of the largest worker of a 2-worker CLI render at S = 32."""
    out = tempfile.mkdtemp()
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    cmd = [sys.executable, "-m", "augment", "render", "--image", image, "--count", str(count), "--size", "32",
           "--workers", "2", "--quiet", "--out", os.path.join(out, "s")]
    try:
        probe = subprocess.run([sys.executable, "-c", code, *cmd], cwd=ROOT, capture_output=True, text=True, check=True,
                               timeout=600)
        return int(probe.stdout.split()[-1]) / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    finally:
        shutil.rmtree(out)


def run(quick: bool) -> str:
    """The render section; on a synthetic stand-in for image A it is marked ``STAND_IN`` and the image is
    removed afterwards."""
    src, path = source()
    try:
        return _section(src, path, quick)
    finally:
        if path != IMAGE_A:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _section(src: Source, path: str, quick: bool) -> str:
    n, reps = (40, 1) if quick else (1000, 5)
    load0 = os.getloadavg()[0]
    (s256, floor), (s32, floor32) = paired(src, 256, "jpg", n, reps), paired(src, 32, "png", n, reps)
    d = 64 if quick else 8000
    (w1, c1), (w2, c2) = end_to_end(path, d, 1), end_to_end(path, d, 2)
    ds = (200, 800) if quick else (5000, 50000)
    rss = [peak_rss(path, x)[0] for x in ds]
    name = os.path.basename(path)
    return "\n".join([
        "## Render (`augment render`)", "",
        *([f"{STAND_IN}: {IMAGE_A} is missing, so this section measured a synthetic image of the same "
            f"size; its figures are not the paper image's.", ""] if path != IMAGE_A else []),
        f"Source `{name}` ({path if path == IMAGE_A else 'synthetic, removed after the run'}) "
        f"{src.rgb.shape[1]}x{src.rgb.shape[0]}; one-core figures are CPU time "
        f"(`time.process_time`, min of {reps} rounds of {n} patches, render and floor rounds alternating; "
        f"the floor uses the renderer's own encoder); "
        f"load average {load0:.1f} at the start on {os.cpu_count()} cores."
        f"{' QUICK MODE: numbers meaningless.' if quick else ''}", "",
        "| measurement (one core, CPU time) | patches/s | µs/patch | vs its encode-only floor |",
        "|---|---:|---:|---:|",
        f"| floor: JPEG q95 encode of random 256x256 crops | {floor:,.0f} | {1e6 / floor:,.0f} | 1.00 |",
        f"| render S = 256, JPEG q95 | {s256:,.0f} | {1e6 / s256:,.0f} | **{s256 / floor:.2f}** |",
        f"| floor: PNG encode of random 32x32 crops | {floor32:,.0f} | {1e6 / floor32:,.0f} | 1.00 |",
        f"| render S = 32, PNG | {s32:,.0f} | {1e6 / s32:,.0f} | {s32 / floor32:.2f} |", "",
        f"| full `render` S = 256, D = {d:,} (tar + fsync, wall clock) | patches/s | CPU ms/patch | speed-up |",
        "|---|---:|---:|---:|",
        f"| 1 worker | {w1:,.0f} | {c1:.2f} | 1.00 |",
        f"| 2 workers | {w2:,.0f} | {c2:.2f} | {w2 / w1:.2f} |",
        "", "| D (S = 32, 2 workers) | peak RSS of the largest process (MiB) |", "|---:|---:|",
        *[f"| {x:,} | {r:,.0f} |" for x, r in zip(ds, rss)],
        *stages(src, n, reps, floor),
        *many_sources(quick),
        f"\nLoad average at the end: {os.getloadavg()[0]:.1f}.", ""])


# --------------------------------------------------------------------------- memory with many sources

_RSS_PROBE = ("import resource, sys, time; from augment.__main__ import cli; t = time.perf_counter(); "
              "cli(sys.argv[1:], standalone_mode=False); "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
              "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)")


def imagenet_like(folder: str, n: int) -> None:
    """``n`` textured 500x375 JPEGs (ImageNet's typical size), each different."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    os.makedirs(folder, exist_ok=True)
    for k in range(n):
        img = (rng.integers(0, 200, 3) + 40 * np.sin((xx[..., None] * (k % 7 + 1) + yy[..., None]) / 17.0)
               + rng.integers(0, 40, (375, 500, 3)))
        cv2.imwrite(os.path.join(folder, f"{k:05d}.jpg"), img.clip(0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])


def many_sources_rss(folder: str, n: int, count: int, cache_mib: int) -> tuple[float, float, float, str]:
    """(peak RSS MiB of the main process, of the largest worker, wall s, set id) of a 2-worker render of
    ``count`` S = 256 patches from ``n`` sources of ``folder``, in a fresh process."""
    out = tempfile.mkdtemp()
    cmd = ["render", "--image", folder, "--n", str(n), "--count", str(count), "--size", "256", "--workers", "2",
           "--samples-per-shard", str(count // 2), "--source-cache", str(cache_mib), "--quiet",
           "--out", os.path.join(out, "s")]
    try:
        # Started through a small interpreter: a child's ru_maxrss counts the pages of the process that
        # forked it (this benchmark holds hundreds of MiB by now), so the probe's parent must be small.
        spawn = [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"]
        res = subprocess.run([*spawn, sys.executable, "-c", _RSS_PROBE, *cmd], cwd=ROOT, capture_output=True,
                             text=True, check=True, timeout=1200)
        main, worker, wall = res.stdout.split()[-3:]
        set_id = res.stdout.split("set ")[-1].split()[0]
        return int(main) / 1024, int(worker) / 1024, float(wall), set_id
    finally:
        shutil.rmtree(out)


def many_sources(quick: bool) -> list[str]:
    """Markdown rows: peak RSS at N = 10 and N = 1,000 sources, bounded cache (default) and unbounded."""
    from augment.sources import SOURCE_CACHE_MIB

    ns, count, bound = ((5, 40), 80, 8) if quick else ((10, 1000), 2000, SOURCE_CACHE_MIB)
    folder = tempfile.mkdtemp()
    try:
        imagenet_like(folder, ns[-1])
        runs = [(n, bound) for n in ns] + [(ns[-1], 1 << 20)]
        rows = [(n, mib, *many_sources_rss(folder, n, count, mib)) for n, mib in runs]
    finally:
        shutil.rmtree(folder)
    same = rows[1][5] == rows[2][5]
    return ["", f"Many sources: a 2-worker `render` of D = {count:,} patches at S = 256 from N generated 500x375 "
            f"JPEG sources (peak RSS from `getrusage`, main process and largest worker, in a fresh process).", "",
            "| N | `--source-cache` (MiB) | main process peak RSS (MiB) | largest worker peak RSS (MiB) | wall s |",
            "|---:|---:|---:|---:|---:|",
            *[f"| {n:,} | {'unbounded' if mib == 1 << 20 else mib} | {a:,.0f} | {b:,.0f} | {w:.1f} |"
              for n, mib, a, b, w, _ in rows],
            "", f"Bounded and unbounded N = {ns[-1]:,} renders hold {'the same' if same else 'DIFFERENT'} bytes "
            f"(set ids {rows[1][5]} / {rows[2][5]}). The unbounded row keeps every pyramid in every process, so "
            f"its memory grows with N; with the bound a process holds at most the cache plus its interpreter "
            f"and one shard, whatever N is, and decodes an evicted source again when a shard needs it (wall "
            f"time {rows[1][4]:.1f} s bounded, {rows[2][4]:.1f} s unbounded)."]
