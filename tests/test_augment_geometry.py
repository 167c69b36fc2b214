"""The crop sampler's bounds, the affine map, the colour matrix, and antialiasing of the one resampling."""
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from augment.color import Jitter, JitterParams, LUMA, color_matrix, hue_rotation, sample_jitter
from augment.geometry import GeomParams, Pyramid, bbox, crop_to_source, max_area, sample_crop
from augment.render import Recipe, Renderer
from augment.sources import Source


def rng(i, seed=0):
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, i])))


def corners(c):
    M = crop_to_source(c, 16)
    pts = np.array([[-0.5, -0.5, 1], [15.5, -0.5, 1], [-0.5, 15.5, 1], [15.5, 15.5, 1]]).T
    return M @ pts


@pytest.mark.parametrize("W,H", [(2560, 1920), (600, 225), (90, 700)])
def test_crop_bounds_hold_over_many_draws(W, H):
    p = GeomParams()
    crops = [sample_crop(rng(i), W, H, p) for i in range(3000)]
    angles = np.array([c.angle for c in crops])
    assert angles.min() >= -35 and angles.max() <= 35 and angles.std() > 15
    for c in crops:
        assert p.aspect - 1e-9 <= c.h / c.w <= 1 / p.aspect + 1e-9
        assert c.w * c.h <= W * H * (1 + 1e-9)
        if not c.fallback:
            assert c.w * c.h >= p.min_area * W * H * (1 - 1e-9)
        pts = corners(c)  # every corner of the rotated crop lies inside the source
        assert pts[0].min() >= -1e-6 and pts[0].max() <= W + 1e-6
        assert pts[1].min() >= -1e-6 and pts[1].max() <= H + 1e-6
    flips = np.mean([c.flip for c in crops])
    assert 0.45 < flips < 0.55
    assert not any(c.fallback for c in crops)
    # area is uniform over what fits: about half the crops use more than half of the room they have
    room = [min(W * H, max_area(W, H, c.h / c.w, c.angle)) for c in crops]
    assert 0.45 < np.mean([c.w * c.h > 0.5 * r for c, r in zip(crops, room)]) < 0.55


@pytest.mark.parametrize("W,H", [(1, 1), (3000, 2), (2, 3000), (5, 7)])
def test_any_source_shape_finishes_and_fits(W, H):
    for i in range(200):
        c = sample_crop(rng(i), W, H, GeomParams())
        bw, bh = bbox(c.w, c.h, c.angle)
        assert bw <= W * (1 + 1e-9) and bh <= H * (1 + 1e-9)


def test_no_scale_no_rotation_is_the_whole_image():
    c = sample_crop(rng(3), 640, 480, GeomParams(scale=False, rotation=False))
    assert np.allclose((c.cx, c.cy, c.w, c.h, c.angle), (320, 240, 640, 480, 0.0))


def test_affine_maps_output_corners_to_crop_corners_and_flips():
    c = sample_crop(rng(5), 800, 600, GeomParams(flip_prob=0.0))
    pts = corners(c)
    a = math.radians(c.angle)
    # the top-left output corner is the crop centre minus half the crop along its rotated axes
    tl = (c.cx - c.w / 2 * math.cos(a) - c.h / 2 * math.sin(a), c.cy + c.w / 2 * math.sin(a) - c.h / 2 * math.cos(a))
    assert np.allclose(pts[:, 0], tl)
    flipped = crop_to_source(type(c)(**{**c.__dict__, "flip": True}), 16)
    assert np.allclose(flipped[:, 0], -crop_to_source(c, 16)[:, 0])


def step_by_step(x, j):
    """Reference: the four jitter steps applied one after another, in float."""
    x = x * j.brightness
    m = (x @ LUMA).mean()
    x = j.contrast * x + (1 - j.contrast) * m
    g = (x @ LUMA)[..., None]
    x = j.saturation * x + (1 - j.saturation) * g
    return x @ hue_rotation(j.hue).T


def test_colour_matrix_equals_the_four_steps():
    x = np.random.default_rng(0).uniform(0, 255, (50, 3))
    for i in range(20):
        j = sample_jitter(rng(i), JitterParams())
        M = color_matrix(j, x.mean(0))
        assert np.allclose(x @ M[:, :3].T + M[:, 3], step_by_step(x, j))


def test_hue_rotation_and_limits():
    assert np.allclose(hue_rotation(1 / 3) @ [255, 0, 0], [0, 255, 0])
    assert np.allclose(hue_rotation(0.07) @ [9, 9, 9], [9, 9, 9])
    M = color_matrix(Jitter(1.0, 1.0, 0.0, 0.0), np.zeros(3))  # saturation 0: grey
    assert np.allclose(M[:, :3] @ [200, 10, 30], LUMA @ [200, 10, 30])
    js = [sample_jitter(rng(i), JitterParams()) for i in range(2000)]
    for f in ("brightness", "contrast", "saturation"):
        v = np.array([getattr(j, f) for j in js])
        assert v.min() >= 0.6 and v.max() <= 1.4 and v.std() > 0.2
    h = np.array([j.hue for j in js])
    assert h.min() >= -0.1 and h.max() <= 0.1


def render_array(rgb, size, **geom):
    src = Source("t", "t", "0" * 64, None, "RGB", rgb)
    rec = Recipe(count=1, size=size, image_format="png", geom=GeomParams(**geom), jitter=JitterParams(enabled=False))
    out, _ = Renderer(rec, [src]).pyramids[0].warp(sample_crop(rng(0), rgb.shape[1], rgb.shape[0], rec.geom), size)
    return out[..., :3]


def test_full_image_crop_is_an_antialiased_resize():
    yy, xx = np.mgrid[0:900, 0:1200]
    checker = (((xx // 2) + (yy // 2)) % 2 * 255).astype(np.uint8)  # 2-px checkerboard: far above Nyquist at S=64
    rgb = np.repeat(checker[..., None], 3, 2)
    ours = render_array(rgb, 64, scale=False, rotation=False, flip_prob=0.0).astype(float)
    pil = np.asarray(Image.fromarray(rgb).resize((64, 64), Image.BILINEAR)).astype(float)
    naive = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_LINEAR).astype(float)
    assert naive.std() > 40  # the aliased resize shows a strong pattern ...
    assert ours.std() < 6 and np.abs(ours - pil).mean() < 4  # ... ours is the flat grey PIL gives


def test_pyramid_levels_stop_at_the_whole_image_scale():
    p = Pyramid(np.zeros((1920, 2560, 3), np.uint8), 256)
    scales = [math.sqrt(sx * sy) for sx, sy in p.scales]
    assert scales[-1] <= math.sqrt(1920 * 2560) / 256 and len(p.levels) >= 6
    assert all(1.3 < b / a < 1.5 for a, b in zip(scales, scales[1:]))


def test_fast_bgr_matrix_equals_the_reference_matrix():
    from augment.color import bgr_matrix

    r = np.random.default_rng(1)
    for i in range(50):
        j = sample_jitter(rng(i), JitterParams())
        m = r.uniform(0, 255, 3)
        assert np.allclose(bgr_matrix(j, m), color_matrix(j, m)[::-1], atol=1e-9)


def test_jittered_patch_matches_the_float_steps_within_rounding():
    from augment.color import apply_bgr

    rgba = np.random.default_rng(2).integers(0, 256, (24, 24, 4), dtype=np.uint8)
    x = rgba[..., :3].reshape(-1, 3).astype(float)
    for i in range(10):
        j = sample_jitter(rng(i), JitterParams())
        ref = np.clip(np.rint(step_by_step(x, j)), 0, 255)[:, ::-1].reshape(24, 24, 3)
        assert np.abs(apply_bgr(rgba, j).astype(float) - ref).max() <= 1


def test_vectorised_crops_equal_one_at_a_time_for_mixed_sources():
    """A shard's crops are drawn in one call with per-row source sizes; each row must equal its own crop."""
    from augment.geometry import crops_from_uniforms

    class Fixed:  # hands sample_crop known draws
        def __init__(self, u):
            self.u = u

        def random(self, shape):
            return np.asarray(self.u, float).reshape(shape)

    u = np.random.default_rng(3).random((300, 6))
    W = np.where(np.arange(300) % 2, 2560.0, 90.0)
    H = np.where(np.arange(300) % 2, 1920.0, 700.0)
    for p in (GeomParams(), GeomParams(scale=False), GeomParams(rotation=False, min_area=0.5)):
        cols = crops_from_uniforms(u, W, H, p)
        for k in range(0, 300, 7):
            one = sample_crop(Fixed(u[k]), int(W[k]), int(H[k]), p)
            assert (one.cx, one.cy, one.w, one.h, one.angle, one.flip, one.fallback) == \
                tuple(c[k].item() for c in cols)
