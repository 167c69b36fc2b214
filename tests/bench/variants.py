"""Render variants measured (docs/variants.md): hue spaces, jitter orders, crop samplers, the released
recipe's geometry. Run alone with `python -m tests.bench.variants` (prints Markdown)."""
from __future__ import annotations

import os

import cv2
import numpy as np

from augment.color import Jitter, JitterParams, apply_bgr, jitter_bgr
from augment.geometry import GeomParams, TRIES, crops_from_uniforms, joint_crops_from_uniforms
from augment.recipes import RECIPE_DEFAULTS, extra_uniforms, released_crops, released_matrices, resized_side
from augment.render import Recipe, Renderer, _philox_key, uniforms
from augment.sources import load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGES = os.environ.get("SOURCE_IMAGE_DIR") or os.path.join(ROOT, "..", "shared", "data", "images")
FILES = {"A": "ameyoko.jpg", "B": "animals.png", "C": "sf.png"}


def _rgba(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)


def hue_table(images: dict[str, np.ndarray]) -> str:
    """Per-channel mean |rgb-rotation - hsv| of the hue step at h = ±0.1 on each image, and the worst case
    over the RGB cube."""
    cube = np.stack(np.meshgrid(*[np.arange(0, 256, 5)] * 3, indexing="ij"), -1).reshape(-1, 1, 3).astype(np.uint8)
    names = list(images)
    rows = [f"| h | {' | '.join(f'Image {k}: R, G, B' for k in names)} | max on the RGB cube (step 5) | at |",
            "|---:|" + "---|" * len(names) + "---:|---|"]
    for h in (0.1, -0.1, 0.05):
        j = Jitter(1.0, 1.0, 1.0, h)
        d = {k: np.abs(apply_bgr(_rgba(x), j).astype(int) - jitter_bgr(_rgba(x), j, None, "hsv").astype(int))
             for k, x in {**images, "cube": cube}.items()}
        worst = np.unravel_index(d["cube"].argmax(), d["cube"].shape)[0]
        means = " | ".join(", ".join(f"{v:.1f}" for v in d[k].reshape(-1, 3).mean(0)[::-1]) for k in names)
        rows.append(f"| {h:+.2f} | {means} | {d['cube'].max()} | {tuple(cube[worst, 0].tolist())} |")
    return "\n".join(rows)


def patch_difference(src, recipe_a: Recipe, recipe_b: Recipe, k: int) -> np.ndarray:
    """Per-channel (R, G, B) mean |a - b| over ``k`` patches of two recipes that share their draws."""
    out = []
    for r in (recipe_a, recipe_b):
        ren = Renderer(r, [src])
        out.append(np.stack([cv2.imdecode(np.frombuffer(ren.sample(i)["png"], np.uint8), cv2.IMREAD_COLOR)
                             for i in range(k)]).astype(int))
    return np.abs(out[0] - out[1]).reshape(-1, 3).mean(0)[::-1]


def colour_table(src, k: int) -> str:
    """Paper patches against the same patches with one colour switch changed (same draws)."""
    base = Recipe(count=k, size=64, image_format="png")
    rows = ["| switch changed (from the paper's) | mean abs difference R, G, B (levels) |", "|---|---|"]
    for name, jit in (("--hue-space hsv", JitterParams(hue_space="hsv")),
                      ("--jitter-order random", JitterParams(order="random")),
                      ("both (ColorJitter)", JitterParams(hue_space="hsv", order="random"))):
        d = patch_difference(src, base, Recipe(count=k, size=64, image_format="png", jitter=jit), k)
        rows.append(f"| {name} | {', '.join(f'{v:.2f}' for v in d)} |")
    return "\n".join(rows)


def draws(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The renderer's own geometry draws (seed 0) of samples 0 .. n - 1: base columns 4-9 and the extra 32."""
    return uniforms(0, 0, n)[:, 4:], extra_uniforms(_philox_key(0), 0, n)


def sampler_stats(W: int, H: int, n: int, p: GeomParams) -> dict[str, tuple[float, ...]]:
    """(conditional, joint) mean area fraction, P(|angle| < 10°), mean |angle|, fallback share."""
    u, x = draws(n)
    x = x[:, 5:]
    out = {}
    for name, c in (("conditional", crops_from_uniforms(u, W, H, p)),
                    ("joint", joint_crops_from_uniforms(u, x, W, H, p))):
        cx, cy, w, h, angle, flip, fb = c
        out[name] = ((w * h).mean() / (W * H), (np.abs(angle) < 10).mean(), np.abs(angle).mean(), fb.mean())
    return out


def sampler_table(sizes: dict[str, tuple[int, int]], n: int) -> str:
    rows = ["| image | sampler | mean area fraction | P(\\|α\\| < 10°) | mean \\|α\\| | fallback |",
            "|---|---|---:|---:|---:|---:|"]
    for img, (W, H) in sizes.items():
        for name, (a, p10, ma, fb) in sampler_stats(W, H, n, GeomParams()).items():
            rows.append(f"| {img} ({W}×{H}) | {name} | {a:.3f} | {p10:.3f} | {ma:.1f}° | {fb:.2%} |")
    return "\n".join(rows)


def released_table(sizes: dict[str, tuple[int, int]], n: int, size: int) -> str:
    """The released recipe's crops: area fraction of the square, fallbacks, and patches with black corners."""
    rows = ["| image | sampler | mean area fraction of the square | fallback | patches with black corners |",
            "|---|---|---:|---:|---:|"]
    g0 = RECIPE_DEFAULTS["released"][0]
    u, x = draws(n)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], float).T - [[0.5], [0.5], [0]]
    for img, (W, H) in sizes.items():
        for sampler in ("conditional", "joint"):
            g = GeomParams(**{**g0.__dict__, "sampler": sampler})
            c = released_crops(u, x, W, H, g)
            pts = released_matrices(c, size)[1].reshape(n, 2, 3) @ corners  # the corners' outer edges in R x R
            out = ((pts < 0) | (pts > resized_side(size))).any(axis=(1, 2))
            area = (c["rw"] * c["rh"] / c["side"] ** 2).mean()
            rows.append(f"| {img} | {sampler} | {area:.3f} | {c['fallback'].mean():.2%} | {out.mean():.1%} |")
    return "\n".join(rows)


def run(quick: bool = False) -> str:
    """The variants section: Markdown tables of every measured difference."""
    if not all(os.path.isfile(os.path.join(IMAGES, f)) for f in FILES.values()):
        return (f"## Render variants (docs/variants.md)\n\nSTAND-IN INPUT: skipped, the paper's images "
                f"({', '.join(FILES.values())}) are not at {IMAGES}.\n")
    srcs = {k: load(f, os.path.join(IMAGES, f)) for k, f in FILES.items()}
    sizes = {k: (s.rgb.shape[1], s.rgb.shape[0]) for k, s in srcs.items()}
    n = 2000 if quick else 200_000
    return "\n\n".join([
        "## Render variants (docs/variants.md)",
        "Hue step alone (b = c = s = 1), rgb-rotation against hsv, mean absolute difference per channel "
        f"(levels of 255) over each whole image:\n\n{hue_table({k: s.rgb for k, s in srcs.items()})}",
        f"Paper patches (Image A, S = 64, PNG, {100 if not quick else 10} patches, factors from the paper's "
        f"ranges) against the same draws with one switch changed:\n\n{colour_table(srcs['A'], 10 if quick else 100)}",
        f"Paper crop samplers ({n:,} draws each; joint = {TRIES} tries, then RandomResizedCrop's fallback):"
        f"\n\n{sampler_table(sizes, n)}",
        f"Released recipe at S = 256 ({n:,} draws each):\n\n{released_table(sizes, n, 256)}",
    ]) + "\n"


if __name__ == "__main__":
    print(run(quick=bool(os.environ.get("QUICK"))))
