"""Rendering: write -> read round trip, determinism across workers and shard ranges, resume, sources."""
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from augment.manifest import read_manifest
from augment.render import Recipe, RenderConfig, merge, render
from augment.sources import NAMED, load, to_rgb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def textured(path, w=96, h=72, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = (np.stack([xx * 2, yy * 3, (xx + yy) % 255], -1) + rng.integers(0, 60, (h, w, 3))).clip(0, 255)
    Image.fromarray(img.astype(np.uint8)).save(path)
    return str(path)


def cfg(image, out, count=24, size=16, per=8, fmt="png", workers=1, shard_range=None, **kw):
    recipe = Recipe(count=count, size=size, image_format=fmt, samples_per_shard=per, **kw)
    return RenderConfig(image, str(out), recipe, workers=workers, shard_range=shard_range, progress=False,
                        command="test")


def shard_hashes(out):
    m = read_manifest(out)
    return m.id, [(s.name, s.sha256) for s in m.shards]


def test_round_trip_plain_tar_and_webdataset(tmp_path):
    src = textured(tmp_path / "src.png")
    render(cfg(src, tmp_path / "set", count=20, per=8))
    m = read_manifest(tmp_path / "set")
    assert (m.count, m.size, m.image_format, [s.count for s in m.shards]) == (20, 16, "png", [8, 8, 4])
    raw = m.raw
    assert raw["samples_per_shard"] == 8 and raw["versions"]["opencv"] and raw["command"] == "test"
    assert not {"workers", "out", "shard_range"} & set(m.config)
    assert m.sources[0]["sha256"] == hashlib.sha256(open(src, "rb").read()).hexdigest()
    with tarfile.open(m.shard_urls[2]) as tar:
        members = tar.getmembers()
        assert [x.name for x in members[:2]] == ["000000016.json", "000000016.png"]
        assert all(x.mtime == 946684800 and x.uid == 0 for x in members)
        meta = json.loads(tar.extractfile("000000017.json").read())
        img = Image.open(io.BytesIO(tar.extractfile("000000017.png").read()))
    assert img.size == (16, 16) and img.mode == "RGB"
    assert meta["index"] == 17 and meta["source"] == "src.png" and {"crop", "angle", "flip", "hue"} <= set(meta)
    import webdataset as wds

    samples = list(wds.WebDataset(m.shard_urls, shardshuffle=False).decode("rgb8"))
    assert [int(s["__key__"]) for s in samples] == list(range(20))
    assert samples[0]["png"].shape == (16, 16, 3)


def test_bytes_independent_of_workers_and_shard_ranges(tmp_path):
    src = textured(tmp_path / "src.png")
    render(cfg(src, tmp_path / "one", count=30, per=7, fmt="jpg"))
    render(cfg(src, tmp_path / "two", count=30, per=7, fmt="jpg", workers=2))
    render(cfg(src, tmp_path / "parts", count=30, per=7, fmt="jpg", shard_range=(3, 5)))
    render(cfg(src, tmp_path / "parts", count=30, per=7, fmt="jpg", shard_range=(0, 3), workers=2))
    assert not os.path.exists(tmp_path / "parts" / "manifest.json")
    merge(str(tmp_path / "parts"))
    ref = shard_hashes(tmp_path / "one")
    assert shard_hashes(tmp_path / "two") == ref and shard_hashes(tmp_path / "parts") == ref
    other = tmp_path / "seed1"
    render(cfg(src, other, count=30, per=7, fmt="jpg", seed=1))
    assert shard_hashes(other)[1][0] != ref[1][0]


def test_resume_keeps_complete_shards_and_redoes_damaged(tmp_path):
    src = textured(tmp_path / "src.png")
    out = tmp_path / "set"
    first = render(cfg(src, out))
    ref = shard_hashes(out)
    with open(out / "shard-000001.tar", "r+b") as f:
        f.seek(700)
        f.write(b"XX")
    again = render(cfg(src, out))
    assert (first["rendered"], again["rendered"], again["kept"]) == (3, 1, 2)
    assert shard_hashes(out) == ref


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    src = textured(tmp_path / "src.png", 400, 300)
    args = ["--image", src, "--count", "1200", "--size", "48", "--samples-per-shard", "40", "--quiet"]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "augment", "render", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(out.glob("shard-*.tar")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "render finished before the kill; the test proved nothing"
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    ref = tmp_path / "ref"
    render(cfg(src, ref, count=1200, size=48, per=40))  # same bytes in-process (format auto = png at 48)
    assert shard_hashes(out) == shard_hashes(ref)
    assert not list(out.glob("*.partial*"))


def test_one_colour_source_gives_one_colour_patches(tmp_path):
    src = tmp_path / "flat.png"
    Image.new("RGB", (300, 80), (200, 40, 90)).save(src)
    render(cfg(str(src), tmp_path / "set", count=40, size=24, per=40))  # rotation, flip, jitter all on
    m = read_manifest(tmp_path / "set")
    with tarfile.open(m.shard_urls[0]) as tar:
        for i in range(40):
            a = np.asarray(Image.open(io.BytesIO(tar.extractfile(f"{i:09d}.png").read())))
            assert (a == a[0, 0]).all(), f"sample {i} has pixels from outside the source"


def test_ablations_share_draws_and_change_bytes(tmp_path):
    src = textured(tmp_path / "src.png")
    render(cfg(src, tmp_path / "all", count=8, per=8))
    render(cfg(src, tmp_path / "nojit", count=8, per=8,
               jitter=__import__("augment.color", fromlist=["x"]).JitterParams(enabled=False)))
    def meta(out, i):
        with tarfile.open(read_manifest(out).shard_urls[0]) as tar:
            return json.loads(tar.extractfile(f"{i:09d}.json").read())
    a, b = meta(tmp_path / "all", 3), meta(tmp_path / "nojit", 3)
    assert a["crop"] == b["crop"] and a["angle"] == b["angle"] and b["brightness"] == 1.0 != a["brightness"]
    assert read_manifest(tmp_path / "all").id != read_manifest(tmp_path / "nojit").id


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "LA", "1"])
def test_every_source_mode_becomes_rgb(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    im = base.convert(mode) if mode != "I;16" else Image.fromarray(
        (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100), "I;16")
    path = tmp_path / f"x.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    im.save(path)
    src = load("x", str(path))
    assert src.rgb.shape == (20, 30, 3) and src.rgb.dtype == np.uint8 and src.mode == mode
    if mode == "I;16":
        assert src.rgb[-1, -1, 0] == round(599 * 100 / 65535 * 255)


def test_alpha_composited_on_white_and_exif_rotation_applied():
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    assert (to_rgb(rgba) == 255).all()
    im = Image.new("RGB", (40, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    assert to_rgb(Image.open(io.BytesIO(buf.getvalue()))).shape == (40, 10, 3)


def test_named_images_env_cache_and_download(tmp_path, monkeypatch):
    from augment import sources

    monkeypatch.delenv("SOURCE_IMAGE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    payload = b"not really the image"
    monkeypatch.setitem(sources.NAMED, "B", ("animals.png", hashlib.sha256(payload).hexdigest()))
    calls = []

    def fake_download(url, dest):
        calls.append(url)
        open(dest, "wb").write(payload)

    monkeypatch.setattr(sources, "download", fake_download)
    path = sources.named_image("B")
    assert open(path, "rb").read() == payload and calls[0].endswith("/images/animals.png")
    assert sources.named_image("B") == path and len(calls) == 1  # second time from the cache

    def offline(url, dest):
        raise OSError("network unreachable")

    monkeypatch.setattr(sources, "download", offline)
    with pytest.raises(Exception, match="SOURCE_IMAGE_DIR"):
        sources.named_image("A")


@pytest.mark.data
def test_paper_image_b_from_shared_data(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("SOURCE_IMAGE_DIR", os.path.join(shared_data, "images"))
    render(cfg("B", tmp_path / "b", count=6, size=32, per=6))
    m = read_manifest(tmp_path / "b")
    assert m.sources[0]["sha256"] == NAMED["B"][1] and m.sources[0]["named"] == "B"
    assert (m.sources[0]["width"], m.sources[0]["height"]) == (600, 225)


def test_draws_are_a_function_of_seed_and_index_only():
    from augment.render import DRAWS, uniforms

    whole = uniforms(7, 0, 50)
    assert whole.shape == (50, DRAWS) and 0 <= whole.min() and whole.max() < 1
    assert np.array_equal(uniforms(7, 13, 29), whole[13:29]) and np.array_equal(uniforms(7, 49, 50), whole[49:])
    assert not np.isin(uniforms(8, 0, 50), whole).any()
    assert 0.45 < whole.mean() < 0.55 and abs(np.corrcoef(whole[:, 4], whole[:, 5])[0, 1]) < 0.35


def test_sample_equals_its_shard_member_and_meta_is_canonical_json(tmp_path):
    from augment.render import Renderer
    from augment.sources import load as load_source

    path = textured(tmp_path / "src.png", 300, 90)
    render(cfg(path, tmp_path / "set", count=12, per=12, fmt="jpg"))
    m = read_manifest(tmp_path / "set")
    renderer = Renderer(Recipe.from_config(m.config), [load_source("Ünïcode \"q\".png", path)])
    with tarfile.open(m.shard_urls[0]) as tar:
        for i in (0, 5, 11):
            got = renderer.sample(i)
            assert got["jpg"] == tar.extractfile(f"{i:09d}.jpg").read()
            meta = json.loads(got["json"])
            assert got["json"] == json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
            assert meta["source"] == "Ünïcode \"q\".png" and meta["index"] == i
