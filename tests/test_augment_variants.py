"""Render variants (docs/variants.md): option bounds, resolution, set ids, determinism, the released
recipe's distribution and its one-resampling geometry against torchvision's step-by-step pipeline."""
import io
import json
import math
import shlex
import tarfile

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from click.testing import CliRunner
from PIL import Image
from torchvision.transforms import InterpolationMode

from augment.cli import cli
from augment.color import Jitter, JitterParams, apply_bgr, hsv_hue, jitter_rgb
from augment.geometry import (GeomParams, Pyramid, _bbox_np, black_outside, crops_from_uniforms,
                              joint_crops_from_uniforms)
from augment.manifest import read_manifest
from augment.recipes import RECIPE_DEFAULTS, VARIANTS, plans, released_crops, released_matrices, resized_side, resolve
from augment.render import Recipe, RenderConfig, merge, render
from tests.test_augment_render import shard_hashes, textured


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def small(image, out, *extra):
    return run("render", "--image", image, "--count", 12, "--size", 16, "--samples-per-shard", 4, "--out", out,
               "--quiet", *extra)


def metas(out):
    m = read_manifest(out)
    found = []
    for url in m.shard_urls:
        with tarfile.open(url) as tar:
            found += [json.loads(tar.extractfile(x).read()) for x in tar.getnames() if x.endswith(".json")]
    return found


def pixels(out, i):
    m = read_manifest(out)
    entry = next(s for s in m.shards if s.first <= i < s.first + s.count)
    with tarfile.open(m.shard_path(entry)) as tar:
        return np.asarray(Image.open(io.BytesIO(tar.extractfile(f"{i:09d}.{m.image_format}").read())))


@pytest.mark.parametrize("option,value,says", [
    ("--variant", "mine", "--variant"), ("--recipe", "later", "--recipe"), ("--crop-sampler", "rrc", "--crop-sampler"),
    ("--hue-space", "lab", "--hue-space"), ("--jitter-order", "shuffled", "--jitter-order"),
    ("--jitter-prob", "1.5", "0<=x<=1"), ("--jitter-prob", "-0.1", "0<=x<=1"), ("--max-shear", "90", "0<=x<90"),
    ("--max-shear", "-1", "0<=x<90"), ("--init-crop", "0", "0<x<=1"), ("--init-crop", "1.2", "0<x<=1")])
def test_bad_values_are_rejected_by_the_parser_in_one_line(tmp_path, option, value, says):
    res = small(textured(tmp_path / "s.png"), tmp_path / "out", option, value)
    errors = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert res.exit_code == 2 and len(errors) == 1 and option in errors[0] and says in errors[0]
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


def test_released_only_options_refused_with_the_paper_recipe(tmp_path):
    res = small(textured(tmp_path / "s.png"), tmp_path / "out", "--max-shear", 10)
    assert res.exit_code == 1 and "belong to --recipe released" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    res = small(textured(tmp_path / "s.png"), tmp_path / "ok", "--recipe", "released", "--max-shear", 10)
    assert res.exit_code == 0


def test_variant_sets_everything_and_explicit_options_win():
    kind, g, j = resolve("released", {})
    assert (kind, g.sampler, j.hue_space, j.order) == ("released", "joint", "hsv", "random")
    assert (g.min_area, g.max_angle, g.flip_prob, g.max_shear, g.init_crop, j.prob) == (0.002, 30, 0, 30, 0.5, 0.5)
    kind, g, j = resolve("released", {"hue_space": "rgb-rotation", "min_area": 0.01, "recipe": "paper"})
    assert (kind, g.sampler, j.hue_space, j.order, g.min_area, g.max_shear) == ("paper", "joint", "rgb-rotation",
                                                                                 "random", 0.01, 0.0)
    assert resolve("paper", {}) == ("paper", GeomParams(), JitterParams())
    assert set(VARIANTS) == {"paper", "released"}


def test_the_paper_default_keeps_its_config_and_every_variant_has_its_own_set_id(tmp_path):
    src = textured(tmp_path / "s.png")
    assert not {"recipe", "hue_space", "crop_sampler", "jitter_order"} & set(Recipe().to_config())
    ids = {}
    for name, extra in {"default": [], "variant paper": ["--variant", "paper"],
                        "explicit paper": ["--recipe", "paper", "--crop-sampler", "conditional", "--hue-space",
                                           "rgb-rotation", "--jitter-order", "fixed", "--jitter-prob", 1],
                        "joint": ["--crop-sampler", "joint"], "hsv": ["--hue-space", "hsv"],
                        "random order": ["--jitter-order", "random"], "p 0.5": ["--jitter-prob", 0.5],
                        "recipe released": ["--recipe", "released"], "variant released": ["--variant", "released"],
                        "released, rotation hue": ["--variant", "released", "--hue-space", "rgb-rotation"]}.items():
        res = small(src, tmp_path / name.replace(" ", "_").replace(",", ""), *extra)
        assert res.exit_code == 0, res.output
        ids[name] = res.output.split("set ")[-1].strip()
    assert ids["default"] == ids["variant paper"] == ids["explicit paper"]
    others = [v for k, v in ids.items() if k not in ("variant paper", "explicit paper")]
    assert len(set(others)) == len(others)
    config = read_manifest(tmp_path / "released_rotation_hue").config
    assert (config["recipe"], config["hue_space"], config["jitter_order"], config["crop_sampler"],
            config["interpolation"], config["min_area"]) == ("released", "rgb-rotation", "random", "joint",
                                                             "bicubic", 0.002)


@pytest.mark.parametrize("geom,jitter,kind", [
    (RECIPE_DEFAULTS["released"][0], RECIPE_DEFAULTS["released"][1], "released"),
    (GeomParams(sampler="joint"), JitterParams(hue_space="hsv", order="random", prob=0.7), "paper")])
def test_variant_bytes_independent_of_workers_and_shard_ranges(tmp_path, geom, jitter, kind):
    src = textured(tmp_path / "src.png", 200, 150)

    def cfg(out, workers=1, shard_range=None):
        recipe = Recipe(count=30, size=24, image_format="jpg", samples_per_shard=7, geom=geom, jitter=jitter,
                        kind=kind)
        return RenderConfig(src, str(tmp_path / out), recipe, workers, shard_range, progress=False, command="t")

    render(cfg("one"))
    render(cfg("two", workers=2))
    render(cfg("parts", shard_range=(2, 5)))
    render(cfg("parts", workers=2, shard_range=(0, 2)))
    merge(str(tmp_path / "parts"))
    ref = shard_hashes(tmp_path / "one")
    assert shard_hashes(tmp_path / "two") == ref == shard_hashes(tmp_path / "parts")
    assert read_manifest(tmp_path / "one").config["recipe"] == kind


def test_released_set_round_trips_through_verify_and_its_command(tmp_path):
    src = textured(tmp_path / "s.png", 160, 120)
    out = tmp_path / "rel"
    assert small(src, out, "--variant", "released", "--jitter-prob", 0.8).exit_code == 0
    res = run("verify", out, "--rerender", 6, "--sources", src)
    assert res.exit_code == 0 and "6 re-rendered samples identical" in res.output, res.output
    words = shlex.split(read_manifest(out).raw["command"])
    assert words[:4] == ["python", "-m", "augment", "render"] and "--variant" not in words
    again = CliRunner().invoke(cli, words[3:-1] + [str(tmp_path / "again"), "--quiet"])
    assert again.exit_code == 0, again.output
    assert read_manifest(tmp_path / "again").id == read_manifest(out).id


def test_released_distribution_no_flip_shear_present_area_in_bounds():
    g = RECIPE_DEFAULTS["released"][0]
    rng = np.random.default_rng(0)
    n = 20000
    for sampler in ("joint", "conditional"):
        c = released_crops(rng.random((n, 6)), rng.random((n, 32)), 2560, 1920, GeomParams(**{**g.__dict__,
                                                                                             "sampler": sampler}))
        side = c["side"]
        assert (side == 960).all() and not c["flip"].any() and c["fallback"].mean() < 1e-3
        assert np.abs(c["shear"]).max() <= 30 and c["shear"].std() > 15 and np.abs(c["angle"]).max() <= 30
        lo, hi = (c["rw"] - 0.5) * (c["rh"] - 0.5) / side ** 2, (c["rw"] + 0.5) * (c["rh"] + 0.5) / side ** 2
        assert (hi >= 1 / 500).all() and (lo <= 1).all() and (c["rw"] <= side).all() and (c["rh"] <= side).all()
        assert (c["ix"] >= 0).all() and (c["ix"] + side <= 2560).all() and (c["iy"] + side <= 1920).all()
        assert (c["rx"] >= 0).all() and (c["rx"] + c["rw"] <= side).all() and (c["ry"] + c["rh"] <= side).all()
        aspect = c["rh"] / c["rw"]
        assert aspect.min() > 0.7 and aspect.max() < 1 / 0.7
        small_ones = (c["rw"] * c["rh"] / side ** 2 < 0.01).mean()  # area ~ U[1/500, 1]: ~0.8% below 0.01
        assert 0.003 < small_ones < 0.02


def test_released_plans_record_shear_and_jitter_probability():
    g, j = RECIPE_DEFAULTS["released"]
    recipe = Recipe(size=32, geom=g, jitter=JitterParams(**{**j.__dict__, "order": "random"}), kind="released")
    rng = np.random.default_rng(1)
    ps = plans(recipe, rng.random((4000, 10)), rng.random((4000, 32)), np.full(4000, 600.0), np.full(4000, 225.0))
    assert 0.47 < np.mean([p.applied for p in ps]) < 0.53
    assert len({tuple(p.meta["order"]) for p in ps}) == 24 and all(sorted(p.meta["order"]) == sorted(
        ["brightness", "contrast", "saturation", "hue"]) for p in ps)
    assert all(p.meta["init"]["side"] == 112 and not p.meta["flip"] and p.crop is None for p in ps)


def smooth_image(W=700, H=520, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (H // 40 + 2, W // 40 + 2, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((W, H), Image.BICUBIC))


@pytest.mark.parametrize("S,angle,shear,flip", [(64, 17.0, -8.0, False), (64, -4.0, 30.0, True),
                                                 (32, 5.0, 29.0, False)])
def test_released_one_resampling_matches_torchvision_steps(S, angle, shear, flip):
    img = smooth_image()
    side, rx, ry, rw, rh, ix, iy = 300, 40, 25, 210, 180, 120, 90
    c = {k: np.array([v]) for k, v in dict(ix=ix, iy=iy, side=side, rx=rx, ry=ry, rw=rw, rh=rh, angle=angle,
                                           shear=shear, flip=flip).items()}
    m, inner = (a[0].tolist() for a in released_matrices(c, S))
    ours = black_outside(Pyramid(img, S).warp_map(m, S, True)[0], inner, resized_side(S))
    R = int(math.sqrt(2) * S)
    p = TF.crop(Image.fromarray(img), iy, ix, side, side)  # the released generator, step by step
    p = TF.resized_crop(p, ry, rx, rh, rw, [R, R], InterpolationMode.BICUBIC)
    p = TF.affine(p, angle, [0, 0], 1.0, [shear, 0.0], InterpolationMode.BILINEAR, fill=0)
    p = TF.center_crop(TF.hflip(p) if flip else p, [S, S])
    ref = np.asarray(p).astype(int)
    ours = ours[..., :3].astype(int)
    black_o, black_r = ours.sum(-1) < 15, ref.sum(-1) < 15
    both = ~(black_o | black_r)
    assert np.abs(ours - ref)[both].mean() < 1.5 and (black_o != black_r).mean() < 0.01
    if abs(shear) > 25:  # the centre crop does not hide a 30° shear's corners
        assert black_r.mean() > 0.005 and black_o.mean() > 0.005


def test_released_one_colour_source_is_that_colour_or_the_black_fill(tmp_path):
    src = tmp_path / "flat.png"
    Image.new("RGB", (300, 200), (200, 40, 90)).save(src)
    out = tmp_path / "set"
    assert small(src, out, "--recipe", "released", "--no-jitter", "--count", 40, "--format", "png").exit_code == 0
    colour, blacks = np.array([200.0, 40.0, 90.0]), 0
    for i in range(40):
        a = pixels(out, i).reshape(-1, 3).astype(float)
        t = a @ colour / (colour @ colour)  # each pixel should be t x the colour: t = 1 inside, 0 in the fill
        assert np.abs(a - t[:, None] * colour).max() <= 1.5, f"sample {i}: a pixel that is not a shade of the source"
        assert t.max() > 0.99 and t.min() >= 0
        blacks += (t < 0.01).any()
    assert 0 < blacks < 40


def test_hsv_hue_and_random_order_match_torchvision():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 30, 3)).astype(np.uint8)
    img[0, :4] = [[255, 0, 0], [0, 0, 255], [0, 0, 0], [255, 255, 255]]
    t = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    as_numpy = lambda x: (x * 255).permute(1, 2, 0).numpy()  # noqa: E731
    for h in (0.1, -0.1, 0.5, 0.0):
        assert np.abs(hsv_hue(img.astype(np.float32), h) - as_numpy(TF.adjust_hue(t, h))).max() < 0.01
    j = Jitter(1.3, 0.7, 1.4, 0.08)
    steps = [lambda x: TF.adjust_brightness(x, j.brightness), lambda x: TF.adjust_contrast(x, j.contrast),
             lambda x: TF.adjust_saturation(x, j.saturation), lambda x: TF.adjust_hue(x, j.hue)]
    for order in [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1)]:
        x = t
        for s in order:
            x = steps[s](x)
        # within 0.05 levels: torchvision's grey uses 0.2989 for red, this project ITU-R 601's 0.299
        assert np.abs(jitter_rgb(img.astype(np.float32), j, order, "hsv") - as_numpy(x)).max() < 0.05
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rot = apply_bgr(rgba, Jitter(1, 1, 1, 0.1))[..., ::-1].astype(int)
    assert np.abs(rot - np.rint(hsv_hue(img.astype(np.float32), 0.1))).max() > 30  # the spaces really differ


def test_jitter_prob_zero_gives_the_unjittered_patches(tmp_path):
    src = textured(tmp_path / "s.png")
    assert small(src, tmp_path / "p0", "--jitter-prob", 0, "--format", "png").exit_code == 0
    assert small(src, tmp_path / "nj", "--no-jitter", "--format", "png").exit_code == 0
    for i in (0, 5, 11):
        assert np.array_equal(pixels(tmp_path / "p0", i), pixels(tmp_path / "nj", i))
    assert not any(m["jittered"] for m in metas(tmp_path / "p0")) and metas(tmp_path / "p0")[3]["brightness"] != 1


@pytest.mark.parametrize("W,H", [(2560, 1920), (600, 225), (3, 900), (1, 1)])
def test_joint_sampler_fits_and_prefers_small_angles(W, H):
    rng = np.random.default_rng(2)
    n, p = 20000, GeomParams(sampler="joint")
    u, tries = rng.random((n, 6)), rng.random((n, 27))
    cx, cy, w, h, angle, flip, fb = joint_crops_from_uniforms(u, tries, W, H, p)
    bw, bh = _bbox_np(w, h, angle)
    assert (cx - bw / 2 >= -1e-6).all() and (cx + bw / 2 <= W + 1e-6).all() and (cy + bh / 2 <= H + 1e-6).all()
    ok = ~fb
    assert (w[ok] * h[ok] >= p.min_area * W * H * (1 - 1e-9)).all() and (np.abs(angle) <= 35).all()
    assert (h / w >= p.aspect - 1e-9).all() and (h / w <= 1 / p.aspect + 1e-9).all()
    assert (angle[fb] == 0).all() and np.allclose(cx[fb], W / 2) and np.allclose(cy[fb], H / 2)
    if W * H > 10000:
        cond = crops_from_uniforms(u, W, H, GeomParams())
        assert (np.abs(angle) < 10).mean() > (np.abs(cond[4]) < 10).mean() + 0.05
        assert 0.45 < flip.mean() < 0.55
