"""Colour jitter as one affine map in RGB (paper §3.1: "a set of linear transformations in RGB space").

Fixed order, each a linear (or affine) map of the RGB vector x:
  1. brightness b:  x -> b x
  2. contrast c:    x -> c x + (1 - c) m 1, m = the patch's mean grey after step 1
  3. saturation s:  x -> s x + (1 - s) (g . x) 1, g = ITU-R 601 luma weights
  4. hue h:         rotation by 2 pi h about the grey axis (1, 1, 1) (h = 1/3 maps red to green)
Composed into one 3 x 4 matrix and applied once, then rounded and clipped to uint8 (no clipping in
between, unlike torchvision's ColorJitter, which also randomises the order).

Named variants (docs/variants.md): ``hue_space="hsv"`` replaces step 4 by torchvision's hue, a shift of
the H channel of HSV; ``order="random"`` applies the four steps in a per-sample random order, clipping
to [0, 255] after each, as ColorJitter does; ``prob`` < 1 applies the whole jitter to only that share
of the patches (the released generator's RandomApply(p = 0.5)).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import cv2
import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])
HUE_SPACES = ("rgb-rotation", "hsv")
JITTER_ORDERS = ("fixed", "random")
STEPS = ("brightness", "contrast", "saturation", "hue")
# Every order of the four steps, indexed by one uniform draw (torchvision draws a randperm(4)).
ORDERS = tuple(itertools.permutations(range(4)))


@dataclass(frozen=True)
class JitterParams:
    """Half-widths of the factor ranges: factors ~ U(1 - x, 1 + x); hue ~ U(-hue, hue) of the circle."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    enabled: bool = True
    prob: float = 1.0
    hue_space: str = "rgb-rotation"
    order: str = "fixed"


@dataclass(frozen=True)
class Jitter:
    brightness: float
    contrast: float
    saturation: float
    hue: float


def sample_jitter(rng: np.random.Generator, p: JitterParams) -> Jitter:
    """Draw the four factors (always drawn, so that --no-jitter leaves every other draw unchanged)."""
    u = rng.random(4)
    j = Jitter(1 - p.brightness + 2 * p.brightness * float(u[0]), 1 - p.contrast + 2 * p.contrast * float(u[1]),
               1 - p.saturation + 2 * p.saturation * float(u[2]), -p.hue + 2 * p.hue * float(u[3]))
    return j if p.enabled else Jitter(1.0, 1.0, 1.0, 0.0)


def jitters_from_uniforms(u: np.ndarray, p: JitterParams) -> np.ndarray:
    """Rows of factors (brightness, contrast, saturation, hue) for rows of U[0, 1) draws ``u`` (n x 4).

    The same arithmetic as ``sample_jitter``, vectorised over a shard (row k depends only on u[k]).
    """
    if not p.enabled:
        return np.tile([1.0, 1.0, 1.0, 0.0], (len(u), 1))
    lo = np.array([1 - p.brightness, 1 - p.contrast, 1 - p.saturation, -p.hue])
    return lo + np.array([2 * p.brightness, 2 * p.contrast, 2 * p.saturation, 2 * p.hue]) * u


_K = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)
_ONES_LUMA = np.outer(np.ones(3), LUMA)


def hue_rotation(h: float) -> np.ndarray:
    """3 x 3 rotation by 2 pi h about the grey axis (Rodrigues' formula, axis (1, 1, 1) / sqrt 3)."""
    t = 2 * math.pi * h
    return math.cos(t) * np.eye(3) + math.sin(t) * _K + (1 - math.cos(t)) / 3.0 * np.ones((3, 3))


def color_matrix(j: Jitter, mean_rgb) -> np.ndarray:
    """The composed 3 x 4 affine map [A | t] for a patch whose per-channel mean is ``mean_rgb``.

    A = c b R(h) (s I + (1 - s) 1 g^T) = c b (s R(h) + (1 - s) 1 g^T), since R fixes the grey axis;
    saturation and hue fix grey too, so the contrast offset (1 - c) m 1 passes through unchanged.
    """
    A = (j.contrast * j.brightness) * (j.saturation * hue_rotation(j.hue) + (1 - j.saturation) * _ONES_LUMA)
    m = j.brightness * (0.299 * mean_rgb[0] + 0.587 * mean_rgb[1] + 0.114 * mean_rgb[2])
    out = np.empty((3, 4))
    out[:, :3] = A
    out[:, 3] = (1 - j.contrast) * m
    return out


def bgr_matrix(j: Jitter, mean_rgb) -> np.ndarray:
    """``color_matrix`` with its rows in BGR order, written out in plain floats (per-patch hot path:
    numpy's small-array overhead cost more than the arithmetic)."""
    t = 2 * math.pi * j.hue
    d = (1 - math.cos(t)) / 3.0
    c, s = math.cos(t) + d, math.sin(t) / math.sqrt(3)
    f, g = j.contrast * j.brightness * j.saturation, j.contrast * j.brightness * (1 - j.saturation)
    off = (1 - j.contrast) * j.brightness * (0.299 * mean_rgb[0] + 0.587 * mean_rgb[1] + 0.114 * mean_rgb[2])
    gr, gg, gb = g * 0.299, g * 0.587, g * 0.114
    # R(h) = cos(t) I + sin(t) K + d 1 1^T (hue_rotation); rows of f R + g 1 luma^T for B, G, R outputs
    return np.array([[f * (d - s) + gr, f * (d + s) + gg, f * c + gb, off],
                     [f * (d + s) + gr, f * c + gg, f * (d - s) + gb, off],
                     [f * c + gr, f * (d - s) + gg, f * (d + s) + gb, off]])


_IDENTITY = Jitter(1.0, 1.0, 1.0, 0.0)


def apply_bgr(rgba: np.ndarray, j: Jitter) -> np.ndarray:
    """S x S x 4 RGB(A) patch -> jittered S x S x 3 uint8 in BGR (the encoders' order), one pass.

    Only 3 -> 3 channels has OpenCV's fast fixed-point ``transform`` (4 -> 3 is ~15x slower: measured), so
    the alpha is dropped first; the mean is taken on the 3-channel copy (less to read).
    """
    if j == _IDENTITY:
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR)
    rgb = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    return cv2.transform(rgb, bgr_matrix(j, cv2.mean(rgb)))  # rows reversed: BGR out at no cost


def order_of(u: float) -> tuple[int, ...]:
    """The step order (indices into ``STEPS``) that one U[0, 1) draw picks, each of the 24 equally likely."""
    return ORDERS[min(int(u * len(ORDERS)), len(ORDERS) - 1)]


def hsv_hue(rgb: np.ndarray, h: float) -> np.ndarray:
    """torchvision's hue step on a float32 RGB patch in [0, 255]: H of HSV shifted by ``h`` of the circle.

    OpenCV's float HSV is scale-free (V = max, S = (max - min) / max), so [0, 255] needs no rescaling; the
    shift keeps each pixel's max and min, so a patch inside the RGB cube stays inside it.
    """
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] + np.float32(360.0 * h), np.float32(360.0))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _affine_step(x: np.ndarray, j: Jitter) -> np.ndarray:
    return cv2.transform(x, color_matrix(j, cv2.mean(x)).astype(np.float32))


def jitter_rgb(rgb: np.ndarray, j: Jitter, order: tuple[int, ...] | None, hue_space: str) -> np.ndarray:
    """Jitter a float32 RGB patch in [0, 255]; returns float32 (not rounded).

    ``order`` None: the fixed order as one affine map, clipped once; with ``hsv`` the map holds only
    brightness, contrast and saturation and the hue step follows the clip (HSV is defined on the RGB
    cube). A tuple: the four steps in that order, each clipped to [0, 255] after it (ColorJitter's
    behaviour). The contrast step blends with
    the mean grey of the patch as it is at that step.
    """
    if order is None:
        if hue_space == "rgb-rotation":
            return np.clip(_affine_step(rgb, j), 0, 255)
        return hsv_hue(np.clip(_affine_step(rgb, Jitter(j.brightness, j.contrast, j.saturation, 0.0)), 0, 255), j.hue)
    x = rgb
    for step in order:
        if step == 3 and hue_space == "hsv":
            x = hsv_hue(x, j.hue)
            continue
        one = [1.0, 1.0, 1.0, 0.0]
        one[step] = (j.brightness, j.contrast, j.saturation, j.hue)[step]
        x = np.clip(_affine_step(x, Jitter(*one)), 0, 255)
    return x


def jitter_bgr(rgba: np.ndarray, j: Jitter, order: tuple[int, ...] | None, hue_space: str) -> np.ndarray:
    """S x S x 4 RGB(A) patch -> jittered S x S x 3 uint8 BGR, for any hue space and step order.

    The paper's case (rotation hue, fixed order) and the identity are ``apply_bgr``'s one composed map,
    bit for bit; the others work in float32 and round once at the end.
    """
    if j == _IDENTITY or (order is None and hue_space == "rgb-rotation"):
        return apply_bgr(rgba, j)
    rgb = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB).astype(np.float32)
    out = np.rint(jitter_rgb(rgb, j, order, hue_space)).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
