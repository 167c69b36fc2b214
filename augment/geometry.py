"""Geometry of one patch: the crop/rotation/flip sampler and the single affine resampling.

Coordinates are continuous source pixels of the full-resolution image with edges at integers: the
image covers [0, W] x [0, H] and pixel (i, j) is centred at (i + 0.5, j + 0.5). A crop is a rectangle
of size (w, h) centred at (cx, cy) and rotated by ``angle`` degrees; "rotate the image, then crop an
axis-aligned box inside it" (paper §3.1) is the same as this rotated crop lying inside the source, which
holds iff its axis-aligned bounding box (w|cos a| + h|sin a|, w|sin a| + h|cos a|) does.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import cv2
import numpy as np

# Pyramid levels shrink by sqrt(2): bilinear then never reads at more than ~1.4x (x the crop's aspect)
# its level's pixel pitch, so a shrinking patch is antialiased by the level's area filter.
LEVEL_STEP = math.sqrt(2.0)


CROP_SAMPLERS = ("conditional", "joint")
TRIES = 10  # the joint sampler's attempts, as torchvision's RandomResizedCrop


@dataclass(frozen=True)
class GeomParams:
    """The paper's crop parameters (β, γ, α range, flip probability), the ablation switches, the crop
    sampler, and the released recipe's shear and initial crop (docs/variants.md)."""

    min_area: float = 1e-3
    max_area: float = 1.0
    aspect: float = 0.75
    max_angle: float = 35.0
    flip_prob: float = 0.5
    scale: bool = True
    rotation: bool = True
    sampler: str = "conditional"
    max_shear: float = 0.0
    init_crop: float = 1.0


@dataclass(frozen=True)
class Crop:
    cx: float
    cy: float
    w: float
    h: float
    angle: float
    flip: bool
    fallback: bool

    def bbox(self) -> tuple[float, float]:
        return bbox(self.w, self.h, self.angle)


def bbox(w: float, h: float, angle: float) -> tuple[float, float]:
    """Axis-aligned size of a (w, h) rectangle rotated by ``angle`` degrees."""
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    return w * c + h * s, w * s + h * c


def max_area(W: int, H: int, ratio: float, angle: float) -> float:
    """Largest area (pixels) of a crop with h/w = ``ratio`` rotated by ``angle`` that fits in W x H."""
    bw, bh = bbox(1 / math.sqrt(ratio), math.sqrt(ratio), angle)  # the unit-area crop's box
    return min(W / bw, H / bh) ** 2


def sample_crop(rng: np.random.Generator, W: int, H: int, p: GeomParams) -> Crop:
    """Draw one crop inside a W x H source: six uniform draws from ``rng``, see ``crops_from_uniforms``."""
    c = crops_from_uniforms(rng.random((1, 6)), W, H, p)
    return Crop(*(float(v[0]) for v in c[:4]), float(c[4][0]), bool(c[5][0]), bool(c[6][0]))


def crops_from_uniforms(u: np.ndarray, W: int, H: int, p: GeomParams) -> tuple[np.ndarray, ...]:
    """Crops for rows of U[0, 1) draws ``u`` (n x 6): arrays (cx, cy, w, h, angle, flip, fallback).

    Vectorised over a shard; row k depends only on u[k]. Columns are used in a fixed order (flip, angle,
    log-aspect, area, x, y); flip and angle are used even when their ablation is on, so ablated sets share
    every other draw with the full set. log(h/w) ~ U[log γ, -log γ] and the angle come first; the area is
    then uniform over the part of [β, max_area] that fits at that aspect and angle (no rejection loop:
    docs/augmentation.md). Only when even β does not fit (extreme sources) is the crop the largest that
    fits (``fallback``, area below β). With ``scale`` off the crop is the whole image (its own aspect),
    shrunk as much as its rotation needs, its centre drawn like any other crop's. Bounded time for any
    source.
    """
    flip = u[:, 0] < p.flip_prob
    angle = -p.max_angle + (p.max_angle - -p.max_angle) * u[:, 1]
    if not p.rotation:
        angle = np.zeros_like(angle)
    lo_r = math.log(p.aspect)
    ratio = np.exp(lo_r + (-lo_r - lo_r) * u[:, 2])
    if p.scale:
        hi = np.minimum(p.max_area * W * H, _max_area_np(W, H, ratio, angle))
        lo = p.min_area * W * H
        fallback = hi < lo
        area = np.where(fallback, hi, lo + u[:, 3] * (hi - lo))
        w, h = np.sqrt(area / ratio), np.sqrt(area * ratio)
    else:
        fallback = np.zeros(len(u), bool)
        t = np.minimum(1.0, np.sqrt(_max_area_np(W, H, H / W, angle) / (W * H)))
        w, h = W * t, H * t
    return _place(u[:, 4], u[:, 5], w, h, angle, W, H) + (flip, fallback)


def _place(ux, uy, w, h, angle, W, H):
    """(cx, cy, w, h, angle): the crop's centre uniform over the positions that keep it inside."""
    w, h = w * (1 - 1e-12), h * (1 - 1e-12)  # keep the box strictly inside after rounding
    bw, bh = _bbox_np(w, h, angle)
    cx = bw / 2 + ux * np.maximum(W - bw, 0.0)
    cy = bh / 2 + uy * np.maximum(H - bh, 0.0)
    return cx, cy, w, h, angle


def joint_crops_from_uniforms(u: np.ndarray, tries: np.ndarray, W, H, p: GeomParams) -> tuple[np.ndarray, ...]:
    """``crops_from_uniforms`` with (angle, log-aspect, area) drawn jointly and rejected until they fit.

    RandomResizedCrop's sampler with the angle added: try k uses the triple (u[:, 1:4] for the first,
    ``tries[:, 3(k-1):3k]`` after: n x 3 (TRIES - 1)), the area uniform over [β, max_area] whatever the
    aspect and angle; the first triple whose rotated box fits wins. When none of the TRIES fits, the crop
    is RandomResizedCrop's fallback: the largest centred crop with the aspect clamped to [γ, 1/γ], angle
    0 (``fallback``). With ``scale`` off there is nothing to reject: the conditional sampler's whole image.
    """
    if not p.scale:
        return crops_from_uniforms(u, W, H, p)
    n = len(u)
    W, H = np.broadcast_to(W, (n,)).astype(float), np.broadcast_to(H, (n,)).astype(float)
    t = np.concatenate([u[:, None, 1:4], tries.reshape(n, TRIES - 1, 3)], axis=1)
    angle = -p.max_angle + 2 * p.max_angle * t[..., 0] if p.rotation else np.zeros((n, TRIES))
    lo_r = math.log(p.aspect)
    ratio = np.exp(lo_r - 2 * lo_r * t[..., 1])
    area = (p.min_area + (p.max_area - p.min_area) * t[..., 2]) * (W * H)[:, None]
    w, h = np.sqrt(area / ratio), np.sqrt(area * ratio)
    bw, bh = _bbox_np(w, h, angle)
    fits = (bw <= W[:, None]) & (bh <= H[:, None])
    k, rows = fits.argmax(axis=1), np.arange(n)
    fallback = ~fits.any(axis=1)
    # the fallback: whole image, cut to the aspect bounds if it is more elongated than they allow
    fw = np.where(H / W > 1 / p.aspect, W, np.minimum(W, H / p.aspect))
    fh = np.where(H / W > 1 / p.aspect, W / p.aspect, H)
    w, h = np.where(fallback, fw, w[rows, k]), np.where(fallback, fh, h[rows, k])
    angle = np.where(fallback, 0.0, angle[rows, k])
    cx, cy, w, h, angle = _place(np.where(fallback, 0.5, u[:, 4]), np.where(fallback, 0.5, u[:, 5]), w, h, angle, W, H)
    return cx, cy, w, h, angle, u[:, 0] < p.flip_prob, fallback


def _bbox_np(w, h, angle):
    a = np.radians(angle)
    c, s = np.abs(np.cos(a)), np.abs(np.sin(a))
    return w * c + h * s, w * s + h * c


def _max_area_np(W, H, ratio, angle):
    bw, bh = _bbox_np(1 / np.sqrt(ratio), np.sqrt(ratio), angle)
    return np.minimum(W / bw, H / bh) ** 2


def crop_to_source(crop: Crop, size: int) -> np.ndarray:
    """2 x 3 affine map from output pixel indices (u, v) of an S x S patch to source coordinates."""
    return np.array(_affine(crop, size, 1.0, 1.0)).reshape(2, 3)


def _affine(crop: Crop, size: int, sx: float, sy: float) -> list[float]:
    """Row-major 2 x 3 map (u, v) -> source coordinates divided by (sx, sy) (plain floats: per-patch hot path).

    With p = fx (u + 0.5 - S/2), q = fy (v + 0.5 - S/2): x = cx + p cos a + q sin a, y = cy - p sin a + q cos a.
    """
    a = math.radians(crop.angle)
    c, s = math.cos(a), math.sin(a)
    fx = (-1.0 if crop.flip else 1.0) * crop.w / size
    fy = crop.h / size
    o = 0.5 - size / 2.0
    a00, a01, a10, a11 = fx * c / sx, fy * s / sx, -fx * s / sy, fy * c / sy
    return [a00, a01, crop.cx / sx + (a00 + a01) * o, a10, a11, crop.cy / sy + (a10 + a11) * o]


class Pyramid:
    """Area-filtered levels of one source (4 channels: OpenCV's fast bilinear path), built once."""

    def __init__(self, rgb: np.ndarray, size: int):
        H, W = rgb.shape[:2]
        self.W, self.H = W, H
        level = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
        self.levels, self.scales = [level], [(1.0, 1.0)]
        # Deepest useful level: a whole-image crop at output size ``size``.
        need = math.sqrt(W * H) / size
        k = 1
        while LEVEL_STEP ** k <= need:
            w, h = max(1, round(W / LEVEL_STEP ** k)), max(1, round(H / LEVEL_STEP ** k))
            if (w, h) == level.shape[1::-1]:
                break
            level = cv2.resize(level, (w, h), interpolation=cv2.INTER_AREA)
            self.levels.append(level)
            self.scales.append((W / w, H / h))
            k += 1
        self._pitch = [math.sqrt(sx * sy) for sx, sy in self.scales]  # increasing: choose() bisects it
        self._scratch = np.empty(0, np.uint8)  # region copies (warp); per process after fork

    @property
    def nbytes(self) -> int:
        return sum(lv.nbytes for lv in self.levels)

    def choose(self, crop: Crop, size: int) -> int:
        """Deepest level whose pitch does not exceed the patch's (geometric mean of both axes)."""
        return self.level_for(math.sqrt(crop.w * crop.h) / size)

    def level_for(self, pitch: float) -> int:
        """Deepest level whose pitch does not exceed ``pitch`` (source pixels per output pixel)."""
        return max(bisect.bisect_right(self._pitch, pitch) - 1, 0)

    def warp(self, crop: Crop, size: int) -> tuple[np.ndarray, int]:
        """Resample the crop to an S x S x 4 patch from one level, reading only the region it needs."""
        k = self.choose(crop, size)
        sx, sy = self.scales[k]
        return self._resample(k, _affine(crop, size, sx, sy), size), k

    def warp_map(self, m, size: int, bicubic: bool) -> tuple[np.ndarray, int]:
        """Resample an S x S x 4 patch through ``m`` (2 x 3, output pixel indices -> source coordinates)
        from the level its pitch sqrt|det m| chooses."""
        k = self.level_for(math.sqrt(abs(m[0] * m[4] - m[1] * m[3])))
        sx, sy = self.scales[k]
        a = [m[0] / sx, m[1] / sx, m[2] / sx, m[3] / sy, m[4] / sy, m[5] / sy]
        return self._resample(k, a, size, cv2.INTER_CUBIC if bicubic else cv2.INTER_LINEAR), k

    def _resample(self, k: int, a: list[float], size: int, interp: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Warp level ``k`` through ``a`` (output pixel indices -> level coordinates), reading only the
        region the patch needs."""
        lv = self.levels[k]
        a00, a01, a02, a10, a11, a12 = a
        a02 -= 0.5  # level coordinates with pixel centres at integers (OpenCV's convention)
        a12 -= 0.5
        e = size - 1.0
        xs = (a02 - 0.5 * (a00 + a01), a02 + a00 * (e + 0.5) - 0.5 * a01, a02 - 0.5 * a00 + a01 * (e + 0.5),
              a02 + (a00 + a01) * (e + 0.5))
        ys = (a12 - 0.5 * (a10 + a11), a12 + a10 * (e + 0.5) - 0.5 * a11, a12 - 0.5 * a10 + a11 * (e + 0.5),
              a12 + (a10 + a11) * (e + 0.5))
        h, w = lv.shape[:2]
        r = 1 if interp == cv2.INTER_LINEAR else 2  # the kernel's reach beyond the sample point
        x0, y0 = max(math.floor(min(xs)) - r, 0), max(math.floor(min(ys)) - r, 0)
        x1, y1 = min(math.ceil(max(xs)) + r + 1, w), min(math.ceil(max(ys)) + r + 1, h)
        M = np.array([[a00, a01, a02 - x0], [a10, a11, a12 - y0]])
        # Warping a contiguous copy of the region is faster than warping the level in place (measured:
        # the rotated reads miss the cache; the row-wise copy streams). The copy goes into one reused
        # buffer: a fresh 0.5 MB array per patch costs page faults. Replicate (never constant black):
        # the bound above only lets sub-pixel rounding reach the edge.
        n = (y1 - y0) * (x1 - x0) * 4
        if n > self._scratch.size:
            self._scratch = np.empty(n, np.uint8)
        roi = self._scratch[:n].reshape(y1 - y0, x1 - x0, 4)
        np.copyto(roi, lv[y0:y1, x0:x1])
        return cv2.warpAffine(roi, M, (size, size), flags=interp | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)


def black_outside(rgba: np.ndarray, g, side: float) -> np.ndarray:
    """Blacken the patch where ``g`` (2 x 3: output pixel indices -> coordinates) leaves [0, side]^2.

    The edge is antialiased: each axis keeps the share of a one-unit box around the point that lies
    inside. The patch is returned unchanged (the same array) when every pixel lies inside.
    """
    n = rgba.shape[0]
    px = np.array([g[2], g[0] * (n - 1) + g[2], g[1] * (n - 1) + g[2], (g[0] + g[1]) * (n - 1) + g[2]])
    py = np.array([g[5], g[3] * (n - 1) + g[5], g[4] * (n - 1) + g[5], (g[3] + g[4]) * (n - 1) + g[5]])
    if min(px.min(), py.min()) >= 0.5 and max(px.max(), py.max()) <= side - 0.5:  # affine: corners bound it
        return rgba
    i = np.arange(n, dtype=np.float64)
    x = g[0] * i[None, :] + g[1] * i[:, None] + g[2]
    y = g[3] * i[None, :] + g[4] * i[:, None] + g[5]
    cover = (np.clip(np.minimum(x, side - x) + 0.5, 0, 1) * np.clip(np.minimum(y, side - y) + 0.5, 0, 1))
    return (rgba * cover[..., None].astype(np.float32) + 0.5).astype(np.uint8)
