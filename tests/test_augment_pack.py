"""`augment pack`: an ImageFolder as a shard set, every image's bytes unchanged, in a seeded order."""
import json
import os
import tarfile

import numpy as np
from click.testing import CliRunner
from PIL import Image

import augment.pack  # noqa: F401  registers the command
from augment.cli import cli
from augment.manifest import read_manifest
from train.loader import make_loader, random_crop_flip


def image_folder(root, classes=2, per_class=5, size=16, fmt="JPEG"):
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"))
        for i in range(per_class):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(root, f"class{c}", f"{i:04d}.{'jpg' if fmt == 'JPEG' else 'png'}"),
                                      format=fmt)
    return str(root)


def members(set_dir):
    out = {}
    for name in sorted(os.listdir(set_dir)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(set_dir, name)) as tar:
                for m in tar.getmembers():
                    out[m.name] = tar.extractfile(m).read()
    return out


def test_pack_keeps_every_image_byte_for_byte_in_a_seeded_order(tmp_path):
    folder = image_folder(tmp_path / "train")
    r = CliRunner().invoke(cli, ["pack", folder, "--out", str(tmp_path / "set"), "--samples-per-shard", "4"])
    assert r.exit_code == 0, r.output
    m = read_manifest(str(tmp_path / "set"))
    assert (m.count, m.size, m.image_format, len(m.shards)) == (10, 16, "jpg", 3)
    assert m.config["kind"] == "imagefolder" and m.sources[0]["files"] == 10
    got = members(tmp_path / "set")
    files = []
    for i in range(10):
        meta = json.loads(got[f"{i:09d}.json"])
        with open(os.path.join(folder, meta["file"]), "rb") as f:
            assert got[f"{i:09d}.jpg"] == f.read()
        assert meta["class"] == int(meta["file"].split(os.sep)[0][-1])
        files.append(meta["file"])
    assert sorted(files) == sorted(os.path.join(f"class{c}", f"{i:04d}.jpg") for c in range(2) for i in range(5))
    assert files != sorted(files)  # shuffled, so batches do not come class by class
    assert CliRunner().invoke(cli, ["verify", str(tmp_path / "set")]).exit_code == 0
    r = CliRunner().invoke(cli, ["verify", str(tmp_path / "set"), "--rerender", "2"])
    assert r.exit_code == 1 and "nothing to re-render" in r.output and "Traceback" not in r.output


def test_pack_is_deterministic_and_its_seed_changes_the_set(tmp_path):
    folder = image_folder(tmp_path / "train")
    ids = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        r = CliRunner().invoke(cli, ["pack", folder, "--out", str(tmp_path / name), "--seed", str(seed)])
        assert r.exit_code == 0, r.output
        ids.append(read_manifest(str(tmp_path / name)).id)
    assert ids[0] == ids[1] != ids[2]


def test_the_loader_reads_a_packed_set(tmp_path):
    folder = image_folder(tmp_path / "train", per_class=8, fmt="PNG")
    assert CliRunner().invoke(cli, ["pack", folder, "--out", str(tmp_path / "set")]).exit_code == 0
    loader = make_loader(str(tmp_path / "set"), batch_size=4, workers=0, seed=0, transform=random_crop_flip(12))
    batches = list(loader.epoch(0))
    assert len(batches) == 4 and batches[0][0].shape == (4, 3, 12, 12)
    assert sorted(int(i) for b in batches for i in b[1]) == list(range(16))


def test_bad_folders_are_one_clear_line(tmp_path):
    folder = image_folder(tmp_path / "train")
    Image.new("RGB", (20, 16)).save(os.path.join(folder, "class0", "9999.jpg"))
    r = CliRunner().invoke(cli, ["pack", folder, "--out", str(tmp_path / "set")])
    assert r.exit_code == 1 and "square images of one size" in r.output and "Traceback" not in r.output
    assert not os.path.exists(tmp_path / "set" / "manifest.json")
    os.makedirs(tmp_path / "empty" / "class0")
    r = CliRunner().invoke(cli, ["pack", str(tmp_path / "empty"), "--out", str(tmp_path / "set2")])
    assert r.exit_code == 1 and "no images in class sub-folders" in r.output
    os.remove(os.path.join(folder, "class0", "9999.jpg"))
    assert CliRunner().invoke(cli, ["pack", folder, "--out", str(tmp_path / "set3")]).exit_code == 0
    r = CliRunner().invoke(cli, ["pack", folder, "--out", str(tmp_path / "set3")])
    assert r.exit_code == 1 and "already holds a shard set" in r.output


def test_a_packed_set_records_that_it_is_a_dataset_and_is_never_single_image(tmp_path):
    from augment.manifest import content_id, identity_payload, is_single_image

    folder = image_folder(tmp_path / "train", classes=1, per_class=3)  # even one class: still a dataset
    r = CliRunner().invoke(cli, ["pack", folder, "--out", str(tmp_path / "set")])
    assert r.exit_code == 0, r.output
    m = read_manifest(str(tmp_path / "set"))
    assert (m.raw["kind"], m.raw["images"]) == ("packed", 3) and not is_single_image(m)
    assert "kind" not in identity_payload(m.raw) and content_id(m.raw) == m.id
    info = CliRunner().invoke(cli, ["info", str(tmp_path / "set")])
    assert info.exit_code == 0
    assert "kind     packed dataset of 3 images (`augment pack`), not a single image" in info.output.splitlines()


def test_a_rendered_set_is_single_image_only_from_one_source(tmp_path):
    from augment.manifest import is_single_image

    for i in range(2):
        arr = np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f"im{i}.png")
    base = ["render", "--count", "4", "--size", "16", "--quiet"]
    one = CliRunner().invoke(cli, base + ["--image", str(tmp_path / "im0.png"), "--out", str(tmp_path / "one")])
    two = CliRunner().invoke(cli, base + ["--image", str(tmp_path), "--n", "2", "--out", str(tmp_path / "two")])
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    m1, m2 = read_manifest(str(tmp_path / "one")), read_manifest(str(tmp_path / "two"))
    assert "kind" not in m1.raw and is_single_image(m1)  # rendered manifests keep their old fields and ids
    assert len(m2.sources) == 2 and not is_single_image(m2)
    info = CliRunner().invoke(cli, ["info", str(tmp_path / "one")])
    assert "kind     rendered from a single image" in info.output.splitlines()
