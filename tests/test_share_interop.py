"""A set reads with no project code: plain tarfile, plain webdataset, Hugging Face datasets (offline)."""
from __future__ import annotations

import glob
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from tests.toyset import make_toy_set


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = make_toy_set(str(tmp_path_factory.mktemp("interop") / "toy"), count=20, size=16, per_shard=8)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    return out, manifest, sorted(glob.glob(os.path.join(out, "shard-*.tar")))


def pixels_from_tar(shards: list[str]) -> dict[str, np.ndarray]:
    """Reference decode with tarfile + PIL only: key -> H x W x 3 uint8."""
    out = {}
    for path in shards:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                if ext == "png":
                    out[key] = np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
    return out


def test_plain_tar_layout(toy):
    folder, manifest, shards = toy
    names = [n for p in shards for n in tarfile.open(p).getnames()]
    assert names == [f"{i:09d}.{ext}" for i in range(manifest["count"]) for ext in ("json", "png")]


def test_plain_webdataset_reads_the_set(toy):
    wds = pytest.importorskip("webdataset")
    folder, manifest, shards = toy
    reference = pixels_from_tar(shards)
    brace = os.path.join(folder, f"shard-{{000000..{len(shards) - 1:06d}}}.tar")
    samples = list(wds.WebDataset(brace, shardshuffle=False).decode("rgb"))
    assert [s["__key__"] for s in samples] == sorted(reference)
    for s in samples:
        assert s["png"].shape == (manifest["size"], manifest["size"], 3)
        assert np.allclose(s["png"], reference[s["__key__"]] / 255.0)
        assert s["json"]["index"] == int(s["__key__"])


def test_hugging_face_datasets_reads_the_set_offline(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed "
                                                      "(pip install -e '.[hf]')")
    folder, manifest, shards = toy
    reference = pixels_from_tar(shards)
    ds = datasets.load_dataset("webdataset", data_files={"train": shards}, split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == manifest["count"]
    assert sorted(ds["__key__"]) == sorted(reference)
    for row in ds:
        assert np.array_equal(np.asarray(row["png"].convert("RGB")), reference[row["__key__"]])
        assert row["json"]["index"] == int(row["__key__"])


def rendered_and_packed(tmp_path) -> tuple[str, str]:
    """A real render (json with ``source_index``) and a packed ImageFolder (json with ``class``)."""
    from click.testing import CliRunner

    import augment.pack  # noqa: F401  registers the command
    from augment.cli import cli
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "src.png")
    for c in range(2):
        os.makedirs(tmp_path / "folder" / f"class{c}")
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / "folder" / f"class{c}" / f"{i}.png")
    runner = CliRunner()
    for args in (["render", "--image", str(tmp_path / "src.png"), "--count", "10", "--size", "16",
                  "--samples-per-shard", "4", "--quiet", "--out", str(tmp_path / "rendered")],
                 ["pack", str(tmp_path / "folder"), "--samples-per-shard", "4", "--out", str(tmp_path / "packed")]):
        res = runner.invoke(cli, args)
        assert res.exit_code == 0, res.output
    return str(tmp_path / "rendered"), str(tmp_path / "packed")


def test_timm_reads_the_set_with_the_split_augment_info_prints(tmp_path):
    timm_data = pytest.importorskip("timm.data", reason="timm is not installed (pip install -e '.[timm]')")
    from click.testing import CliRunner

    from augment.cli import cli
    for folder, target_key in zip(rendered_and_packed(tmp_path), ("source_index", "class")):
        info = CliRunner().invoke(cli, ["info", folder])
        split = next(ln.split()[1] for ln in info.output.splitlines() if ln.startswith("wds "))
        manifest = json.load(open(os.path.join(folder, "manifest.json")))
        assert split == f"shard-{{000000..{len(manifest['shards']) - 1:06d}}}.tar|{manifest['count']}"
        shards = sorted(glob.glob(os.path.join(folder, "shard-*.tar")))
        reference = pixels_from_tar(shards)  # PNG sets: every sample's pixels
        labels = {}
        for path in shards:
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".json"):
                        labels[member.name[:-5]] = json.loads(tar.extractfile(member).read())[target_key]
        # the recipe of docs/sharing.md, as written there
        ds = timm_data.create_dataset("wds/", root=folder, split=split, target_key=target_key,
                                      is_training=False, batch_size=1)
        assert len(ds) == manifest["count"]
        got = list(ds)
        assert len(got) == manifest["count"]
        by_pixels = {arr.tobytes(): key for key, arr in reference.items()}
        for image, target in got:
            key = by_pixels[np.asarray(image).tobytes()]  # every image is a sample of the set ...
            assert target == labels[key]                  # ... with its own label
        assert sorted(by_pixels[np.asarray(i).tobytes()] for i, _ in got) == sorted(reference)


def test_the_wds_split_is_offered_only_for_shards_zero_to_n_in_order():
    from augment.shards import brace_pattern, shard_name
    assert brace_pattern([shard_name(i) for i in range(12)]) == "shard-{000000..000011}.tar"
    assert brace_pattern([shard_name(0)]) == "shard-000000.tar"
    assert brace_pattern([shard_name(0), shard_name(2)]) is None      # a hand-made subset: no pattern fits
    assert brace_pattern([shard_name(1), shard_name(0)]) is None
    assert brace_pattern([]) is None
