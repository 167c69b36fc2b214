"""Renderer speed: patches/s on one core at S = 256 (JPEG q95) and S = 32 beside the JPEG-encode-only
floor of 256 x 256 crops of the same image (same run), 1 vs 2 workers, peak RSS at two values of D."""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

from augment.render import Recipe, RenderConfig, Renderer, render
from augment.sources import Source, load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE_A = os.path.join(os.environ.get("SHARED_DATA", os.path.join(ROOT, "..", "shared", "data")), "images",
                       "ameyoko.jpg")


def source() -> tuple[Source, str]:
    """Image A when the shared data is present, else a synthetic textured image of the same size."""
    if os.path.isfile(IMAGE_A):
        return load("ameyoko.jpg", IMAGE_A), IMAGE_A
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1920, 0:2560]
    img = (np.stack([xx % 251, yy % 241, (xx * yy) % 239], -1) + rng.integers(0, 40, (1920, 2560, 3))).clip(0, 255)
    path = os.path.join(tempfile.mkdtemp(), "synthetic.png")
    cv2.imwrite(path, img.astype(np.uint8))
    return load("synthetic.png", path), path


def encode_floor(rgb: np.ndarray, n: int) -> float:
    """Encodes/s (one core) of q95 JPEGs of random 256 x 256 crops (crops cut before timing)."""
    rng = np.random.default_rng(0)
    H, W = rgb.shape[:2]
    crops = [np.ascontiguousarray(rgb[y:y + 256, x:x + 256, ::-1])
             for y, x in zip(rng.integers(0, H - 256, n), rng.integers(0, W - 256, n))]
    t = time.perf_counter()
    for c in crops:
        cv2.imencode(".jpg", c, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return n / (time.perf_counter() - t)


def one_core(src: Source, size: int, fmt: str, n: int) -> float:
    """Patches/s of the in-process sampler (sampling, warp, jitter, encode, JSON; no tar)."""
    r = Renderer(Recipe(count=10 ** 9, size=size, image_format=fmt), [src])
    cv2.setNumThreads(1)
    t = time.perf_counter()
    for i in range(n):
        r.sample(i)
    return n / (time.perf_counter() - t)


def end_to_end(image: str, count: int, workers: int) -> float:
    """Patches/s of a full `render` into a temporary folder (tar writing and fsync included)."""
    out = tempfile.mkdtemp()
    try:
        cfg = RenderConfig(image, os.path.join(out, "s"), Recipe(count=count, size=256, samples_per_shard=count // 8),
                           workers=workers, progress=False)
        t = time.perf_counter()
        render(cfg)
        return count / (time.perf_counter() - t)
    finally:
        shutil.rmtree(out)


def peak_rss(image: str, count: int) -> tuple[float, float]:
    """Peak RSS (MiB) of the main process and of the largest worker of a 2-worker CLI render at S = 32."""
    out = tempfile.mkdtemp()
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    cmd = [sys.executable, "-m", "augment", "render", "--image", image, "--count", str(count), "--size", "32",
           "--workers", "2", "--quiet", "--out", os.path.join(out, "s")]
    try:
        probe = subprocess.run([sys.executable, "-c", code, *cmd], cwd=ROOT, capture_output=True, text=True, check=True)
        return int(probe.stdout.split()[-1]) / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    finally:
        shutil.rmtree(out)


def run(quick: bool) -> str:
    src, path = source()
    n = 40 if quick else 3000
    floor = encode_floor(src.rgb, n)
    s256, s32 = one_core(src, 256, "jpg", n), one_core(src, 32, "png", n)
    d = 64 if quick else 16000
    w1, w2 = end_to_end(path, d, 1), end_to_end(path, d, 2)
    ds = (200, 800) if quick else (5000, 50000)
    rss = [peak_rss(path, x)[0] for x in ds]
    name = os.path.basename(path)
    return "\n".join([
        "## Render (`augment render`)", "",
        f"Source `{name}` {src.rgb.shape[1]}x{src.rgb.shape[0]}; one core unless stated; "
        f"{'QUICK MODE: numbers meaningless' if quick else f'{n} patches per one-core figure'}.", "",
        "| measurement | patches/s | vs encode floor |", "|---|---:|---:|",
        f"| JPEG q95 encode only, random 256x256 crops (floor) | {floor:,.0f} | 1.00 |",
        f"| sample at S = 256, JPEG q95 | {s256:,.0f} | {s256 / floor:.2f} |",
        f"| sample at S = 32, PNG | {s32:,.0f} | {s32 / floor:.2f} |",
        f"| full render S = 256, D = {d:,}, 1 worker | {w1:,.0f} | {w1 / floor:.2f} |",
        f"| full render S = 256, D = {d:,}, 2 workers | {w2:,.0f} | {w2 / floor:.2f} (x{w2 / w1:.2f} vs 1) |",
        "", "| D (S = 32, 2 workers) | peak RSS of the largest process (MiB) |", "|---:|---:|",
        *[f"| {x:,} | {r:,.0f} |" for x, r in zip(ds, rss)], ""])
