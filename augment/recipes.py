"""Named recipes and variants of `render` (docs/variants.md).

Two recipes: ``paper`` (the paper's text, §3.1: the default, rendered by ``render.Renderer`` as it always
was) and ``released`` (the authors' later generator, ``make_dataset_single.py``): a random square crop of
half the short side, a random-resized crop of it at R = int(√2·S), a rotation and an x-shear about R's
centre, a centre crop to S, ColorJitter with p = 0.5, bicubic. The released steps are affine maps, so
they are composed here into one map from output pixels to the source and resampled once; where the
map leaves the resized crop the released generator shows its black fill, and so does this one.

Three switches apart from the recipe: the crop sampler (``conditional`` | ``joint``), the hue space
(``rgb-rotation`` | ``hsv``) and the jitter order (``fixed`` | ``random``). ``--variant`` sets the recipe
and all three at once; options given explicitly win. The paper's recipe with the paper's switches is
the legacy pipeline, bit for bit, with the legacy config (so set ids do not change); anything else is a
``Plan`` per sample and records every resolved value in the config.

Extra draws: sample i owns 32 more uniforms from the same Philox key at counter 2**128 + 8i (never met
by the base counters 3i), in a fixed order: jitter order, jitter applied, shear, initial-crop x and y,
then (angle, log-aspect, area) for joint tries 2 … 10. The ten base draws keep their meaning (jitter
factors, flip, angle, log-aspect, area, x, y), so a variant shares every draw it can with the paper.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import click
import numpy as np

from augment.color import HUE_SPACES, JITTER_ORDERS, STEPS, Jitter, JitterParams, jitters_from_uniforms, order_of
from augment.geometry import CROP_SAMPLERS, TRIES, Crop, GeomParams, crops_from_uniforms, joint_crops_from_uniforms

RECIPES = ("paper", "released")
INTERPOLATION = {"paper": "bilinear", "released": "bicubic"}
EXTRA_DRAWS = 32
EXTRA_SAMPLER = "philox4x64[same key],counter=2**128+8*index,u53,32 per sample"


@dataclass(frozen=True)
class Variant:
    """What ``--variant`` sets: the recipe and the three switches."""

    recipe: str = "paper"
    crop_sampler: str = "conditional"
    hue_space: str = "rgb-rotation"
    jitter_order: str = "fixed"


VARIANTS = {"paper": Variant(), "released": Variant("released", "joint", "hsv", "random")}
# Each recipe's own numbers (the defaults of the options it shares); the switches come from the variant.
RECIPE_DEFAULTS = {
    "paper": (GeomParams(), JitterParams()),
    "released": (GeomParams(min_area=1 / 500, max_angle=30.0, flip_prob=0.0, max_shear=30.0, init_crop=0.5),
                 JitterParams(prob=0.5)),
}
# CLI parameter name -> field of GeomParams / JitterParams
GEOM_OPTIONS = {"min_area": "min_area", "max_area": "max_area", "aspect": "aspect", "max_angle": "max_angle",
                "flip_prob": "flip_prob", "crop_sampler": "sampler", "max_shear": "max_shear",
                "init_crop": "init_crop"}
JITTER_OPTIONS = {"brightness": "brightness", "contrast": "contrast", "saturation": "saturation", "hue": "hue",
                  "jitter_prob": "prob", "hue_space": "hue_space", "jitter_order": "order"}


def resolve(variant: str, given: dict) -> tuple[str, GeomParams, JitterParams]:
    """(recipe, geometry, jitter) of a render: the variant's choices, then its recipe's numbers, then
    every option in ``given`` (CLI parameter names; only those the user gave explicitly)."""
    v = VARIANTS[variant]
    kind = given.get("recipe") or v.recipe
    geom, jit = RECIPE_DEFAULTS[kind]
    geom = replace(geom, **{"sampler": v.crop_sampler, **{f: given[k] for k, f in GEOM_OPTIONS.items() if k in given}})
    jit = replace(jit, **{"hue_space": v.hue_space, "order": v.jitter_order,
                          **{f: given[k] for k, f in JITTER_OPTIONS.items() if k in given}})
    return kind, geom, jit


def is_paper(recipe) -> bool:
    """True for the legacy pipeline: the paper's recipe with every switch at the paper's value."""
    g, j = recipe.geom, recipe.jitter
    return (recipe.kind == "paper" and g.sampler == "conditional" and g.max_shear == 0 and g.init_crop == 1.0
            and j.hue_space == "rgb-rotation" and j.order == "fixed" and j.prob == 1.0)


def check(recipe) -> None:
    """One clear line for a recipe that cannot be rendered (options built outside the CLI included)."""
    g, j = recipe.geom, recipe.jitter
    for name, value, allowed in (("--recipe", recipe.kind, RECIPES), ("--crop-sampler", g.sampler, CROP_SAMPLERS),
                                 ("--hue-space", j.hue_space, HUE_SPACES), ("--jitter-order", j.order, JITTER_ORDERS)):
        if value not in allowed:
            raise click.ClickException(f"{name} {value!r} is not one of {', '.join(allowed)}")
    if not (0 <= j.prob <= 1 and 0 <= g.max_shear < 90 and 0 < g.init_crop <= 1):
        raise click.ClickException(f"need 0 <= --jitter-prob <= 1, 0 <= --max-shear < 90, 0 < --init-crop <= 1 "
                                   f"(got {j.prob}, {g.max_shear}, {g.init_crop})")
    if recipe.kind == "paper" and (g.max_shear != 0 or g.init_crop != 1.0):
        raise click.ClickException("--max-shear and --init-crop belong to --recipe released (the paper's "
                                   "recipe has no shear and no initial crop); drop them or add --recipe released")


def config_extra(recipe) -> dict:
    """The config keys a non-legacy recipe adds (none for the legacy one, whose set ids stay as they were)."""
    if is_paper(recipe):
        return {}
    g, j = recipe.geom, recipe.jitter
    return {"recipe": recipe.kind, "crop_sampler": g.sampler, "hue_space": j.hue_space, "jitter_order": j.order,
            "jitter_prob": j.prob, "max_shear": g.max_shear, "init_crop": g.init_crop,
            "interpolation": INTERPOLATION[recipe.kind], "extra_sampler": EXTRA_SAMPLER}


def from_config(c: dict, geom: GeomParams, jit: JitterParams) -> tuple[str, GeomParams, JitterParams]:
    """The recipe name and the switches read back from a config (absent keys: the paper's values)."""
    p = Variant()
    geom = replace(geom, sampler=c.get("crop_sampler", p.crop_sampler), max_shear=c.get("max_shear", 0.0),
                   init_crop=c.get("init_crop", 1.0))
    jit = replace(jit, prob=c.get("jitter_prob", 1.0), hue_space=c.get("hue_space", p.hue_space),
                  order=c.get("jitter_order", p.jitter_order))
    return c.get("recipe", p.recipe), geom, jit


def command_words(recipe) -> list[str]:
    """Options that reproduce the recipe and switches (beside the recipe's own number options)."""
    g, j = recipe.geom, recipe.jitter
    base = Variant()
    words = []
    for opt, v, d in (("--recipe", recipe.kind, base.recipe), ("--crop-sampler", g.sampler, base.crop_sampler),
                      ("--hue-space", j.hue_space, base.hue_space), ("--jitter-order", j.order, base.jitter_order)):
        if v != d:
            words += [opt, v]
    rg, rj = RECIPE_DEFAULTS[recipe.kind]
    for opt, v, d in (("--jitter-prob", j.prob, rj.prob), ("--max-shear", g.max_shear, rg.max_shear),
                      ("--init-crop", g.init_crop, rg.init_crop)):
        if v != d:
            words += [opt, repr(v)]
    return words


def number_defaults(recipe) -> tuple[GeomParams, JitterParams]:
    """The defaults the number options (--min-area ... --hue) fall back on under this recipe."""
    return RECIPE_DEFAULTS[recipe.kind]


def extra_uniforms(key: np.ndarray, first: int, end: int) -> np.ndarray:
    """The 32 extra U[0, 1) draws of samples ``first`` .. ``end - 1`` (module docstring): a pure function
    of (key, index), like ``render.uniforms``."""
    raw = np.random.Philox(key=key, counter=2 ** 128 + 8 * first).random_raw(EXTRA_DRAWS * (end - first))
    return ((raw >> np.uint64(11)) * 2.0 ** -53).reshape(-1, EXTRA_DRAWS)


@dataclass(frozen=True)
class Plan:
    """One sample of a non-legacy recipe: either a paper ``crop`` or a released map ``matrix`` (output
    pixel indices -> source coordinates) with its ``inner`` map to the resized crop (black outside)."""

    jitter: Jitter
    applied: bool
    order: tuple[int, ...] | None
    meta: dict
    crop: Crop | None = None
    matrix: tuple[float, ...] | None = None
    inner: tuple[float, ...] | None = None


def plans(recipe, u: np.ndarray, x: np.ndarray, W: np.ndarray, H: np.ndarray) -> list[Plan]:
    """Plans for rows of base draws ``u`` (n x 10) and extra draws ``x`` (n x 32), sources W x H."""
    g, jp = recipe.geom, recipe.jitter
    jit = jitters_from_uniforms(u[:, :4], jp).tolist()
    applied = (x[:, 1] < jp.prob) & jp.enabled
    orders = [order_of(v) for v in x[:, 0].tolist()] if jp.order == "random" else [None] * len(u)
    if recipe.kind == "paper":
        if g.sampler == "joint":
            cols = joint_crops_from_uniforms(u[:, 4:], x[:, 5:], W, H, g)
        else:
            cols = crops_from_uniforms(u[:, 4:], W, H, g)
        geo = [_paper_geometry(Crop(*c)) for c in zip(*(c.tolist() for c in cols))]
    else:
        geo = released_geometry(u[:, 4:], x, W, H, g, recipe.size)
    out = []
    for j, a, o, (meta, kw) in zip(jit, applied.tolist(), orders, geo):
        meta = dict(meta, brightness=j[0], contrast=j[1], saturation=j[2], hue=j[3], jittered=a,
                    order=[STEPS[s] for s in (o or range(4))])
        out.append(Plan(Jitter(*j), a, o, meta, **kw))
    return out


def _paper_geometry(c: Crop) -> tuple[dict, dict]:
    meta = {"angle": c.angle, "crop": {"cx": c.cx, "cy": c.cy, "h": c.h, "w": c.w}, "fallback": c.fallback,
            "flip": c.flip}
    return meta, {"crop": c}


def released_crops(u: np.ndarray, x: np.ndarray, W, H, g: GeomParams) -> dict[str, np.ndarray]:
    """The released recipe's random choices, vectorised: initial square (ix, iy, side), resized crop
    (rx, ry, rw, rh: integer pixels inside the square), angle, shear, flip, fallback.

    ``u`` is (flip, angle, log-aspect, area, x, y) as the paper's sampler reads it. Integer positions
    and sizes as torchvision's RandomCrop and RandomResizedCrop make them (uniform integer offsets,
    sizes rounded). ``joint``: (log-aspect, area) pairs rejected until both sides fit, TRIES at most,
    then the whole square (RandomResizedCrop's fallback; the released code would try forever).
    ``conditional``: the aspect first, then the area uniform over what fits. ``scale`` off: the
    whole square; ``rotation`` off: no rotation and no shear.
    """
    n = len(u)
    W, H = np.broadcast_to(W, (n,)).astype(float), np.broadcast_to(H, (n,)).astype(float)
    side = np.maximum(np.floor(g.init_crop * np.minimum(W, H)), 1.0)
    lo_r = math.log(g.aspect)
    if g.sampler == "joint":
        t = np.concatenate([u[:, None, 2:4], x[:, 5:].reshape(n, TRIES - 1, 3)[..., 1:]], axis=1)
        ratio, area = np.exp(lo_r - 2 * lo_r * t[..., 0]), g.min_area + (g.max_area - g.min_area) * t[..., 1]
    else:
        ratio = np.exp(lo_r - 2 * lo_r * u[:, 2:3])
        hi = np.minimum(g.max_area, np.minimum(ratio, 1 / ratio))
        area = np.where(hi < g.min_area, hi, g.min_area + (hi - g.min_area) * u[:, 3:4])
    rw, rh = np.rint(side[:, None] * np.sqrt(area / ratio)), np.rint(side[:, None] * np.sqrt(area * ratio))
    fits = (rw >= 1) & (rw <= side[:, None]) & (rh >= 1) & (rh <= side[:, None])
    k, rows = fits.argmax(axis=1), np.arange(n)
    fallback = ~fits.any(axis=1) | (not g.scale)
    rw, rh = np.where(fallback, side, rw[rows, k]), np.where(fallback, side, rh[rows, k])
    rot = g.rotation
    return {"ix": np.floor(x[:, 3] * (W - side + 1)), "iy": np.floor(x[:, 4] * (H - side + 1)), "side": side,
            "rx": np.floor(u[:, 4] * (side - rw + 1)), "ry": np.floor(u[:, 5] * (side - rh + 1)), "rw": rw, "rh": rh,
            "angle": (-g.max_angle + 2 * g.max_angle * u[:, 1]) if rot else np.zeros(n),
            "shear": (-g.max_shear + 2 * g.max_shear * x[:, 2]) if rot else np.zeros(n),
            "flip": u[:, 0] < g.flip_prob, "fallback": fallback & g.scale}


def resized_side(size: int) -> int:
    """R: the side of the released recipe's random-resized crop, int(√2·S) as the released code has it."""
    return int(math.sqrt(2) * size)


def released_matrices(c: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """n x 6 maps from output pixel indices (u, v) to source coordinates (the released steps composed),
    and n x 6 maps from output pixel indices to the R x R resized crop (outside it: the black fill).

    Output pixel (u, v) sits at q = (o + u + ½, o + v + ½) of the R x R image, o = round((R − S) / 2)
    (CenterCrop's offset); a flip mirrors q about R/2; the inverse of torchvision's affine about the
    centre C = (R/2, R/2), p = C + M⁻¹ (q − C) with M = rotation(angle) · x-shear(shear), gives the
    point of the resized crop; that scales by (rw, rh) / R into the square and shifts to the source.
    """
    R = resized_side(size)
    e = int(round((R - size) / 2.0)) + 0.5 - R / 2
    rot, sh = np.radians(c["angle"]), np.radians(c["shear"])
    a, b = np.cos(rot), -np.cos(rot) * np.tan(sh) - np.sin(rot)
    cc, d = np.sin(rot), -np.sin(rot) * np.tan(sh) + np.cos(rot)
    i00, i01, i10, i11 = d, -b, -cc, a  # M⁻¹ (det M = 1)
    sg = np.where(c["flip"], -1.0, 1.0)
    g = np.stack([i00 * sg, i01, R / 2 + (i00 * sg + i01) * e, i10 * sg, i11, R / 2 + (i10 * sg + i11) * e], axis=1)
    m = np.concatenate([(c["rw"] / R)[:, None] * g[:, :3], (c["rh"] / R)[:, None] * g[:, 3:]], axis=1)
    m[:, 2] += c["ix"] + c["rx"]
    m[:, 5] += c["iy"] + c["ry"]
    return m, g


def released_geometry(u: np.ndarray, x: np.ndarray, W, H, g: GeomParams, size: int) -> list[tuple[dict, dict]]:
    """(meta, Plan fields) of each released sample: the composed maps and its record."""
    c = released_crops(u, x, W, H, g)
    m, inner = (a.tolist() for a in released_matrices(c, size))
    out = []
    for i, row in enumerate(zip(*(c[k].tolist() for k in ("ix", "iy", "side", "rx", "ry", "rw", "rh", "angle",
                                                           "shear", "flip", "fallback")))):
        ix, iy, side, rx, ry, rw, rh, angle, shear, flip, fallback = row
        x0, y0 = ix + rx, iy + ry
        meta = {"angle": angle, "shear": shear, "flip": flip, "fallback": fallback,
                "init": {"x": int(ix), "y": int(iy), "side": int(side)},
                "crop": {"x": int(x0), "y": int(y0), "w": int(rw), "h": int(rh)}}
        out.append((meta, {"matrix": tuple(m[i]), "inner": tuple(inner[i])}))
    return out
