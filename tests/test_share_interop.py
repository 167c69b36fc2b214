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
