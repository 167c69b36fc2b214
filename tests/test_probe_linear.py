"""The probe end to end: cached CIFAR-style features, ten-crop ImageFolder probes, the CLI and bad input."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from probe import cache as fcache
from probe.linear import LOG, RESULT, ProbeConfig, main, run_probe, train_cached_layer
from train.config import CommonConfig
from train.run import write_bare_checkpoint
from train.models import Encoder, EncoderSpec


def make_tree(root, splits=("train", "test"), per_class=4, classes=3, size=32, grey=True):
    """A tiny ImageFolder: class c is a noisy image of mean 60 + 60c (one greyscale file per split)."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c in range(classes):
            os.makedirs(os.path.join(root, split, f"c{c}"), exist_ok=True)
            for i in range(per_class):
                a = (rng.normal(0, 15, (size, size, 3)) + 60 + 60 * c).clip(0, 255).astype(np.uint8)
                img = Image.fromarray(a).convert("L") if grey and c == 0 and i == 0 else Image.fromarray(a)
                img.save(os.path.join(root, split, f"c{c}", f"{i}.png"))
    return str(root)


def make_ckpt(tmp_path, arch="small", name="ck.pt"):
    torch.manual_seed(0)
    path = str(tmp_path / name)
    write_bare_checkpoint(path, method="random", cfg=CommonConfig(), encoder=Encoder(EncoderSpec(arch=arch)))
    return path


def cfg(tmp_path, ck, root, out="out", **kw):
    # the toy trees have 3 classes: an ImageFolder of 32x32 images, probed with the CIFAR protocol
    base = dict(checkpoint=ck, dataset="imagefolder", data_root=root, out=str(tmp_path / out), epochs=2,
                batch_size=8, workers=0, device="cpu", cache=str(tmp_path / "cache"))
    return ProbeConfig(**(base | kw))


def test_separable_features_reach_high_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 64)) * 3
    y = rng.integers(0, 4, 600)
    x = (centres[y] + rng.normal(0, 1, (600, 64))).astype(np.float16)
    c = ProbeConfig(epochs=5, batch_size=32, lr=0.05)
    logged = []
    hist = train_cached_layer("conv1", (x[:400], y[:400]), (x[400:], y[400:]), 4, c, torch.device("cpu"),
                              logged.append)
    assert hist[-1][1] > 95.0
    assert [r["epoch"] for r in logged] == [1, 2, 3, 4, 5]


def test_cifar_folder_probe_and_cache_hit(tmp_path):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    first = run_probe(cfg(tmp_path, ck, root, "a"))
    assert first["resolved"]["cache"]["stats"]["train"]["hit"] is False
    assert first["resolved"]["backbone_forward_calls"] > 0
    assert first["resolved"]["dims"] == {"conv1": 11616, "conv2": 9216, "conv3": 3456, "conv4": 2304}
    path = first["resolved"]["cache"]["folder"]
    second = run_probe(cfg(tmp_path, ck, root, "b"))
    assert second["resolved"]["cache"]["stats"]["train"]["hit"] is True
    assert second["resolved"]["backbone_forward_calls"] == 0
    assert second["top1"] == first["top1"]  # same seed, same cached features, same result
    alone = run_probe(cfg(tmp_path, ck, root, "c", layers=("conv3",)))
    assert alone["top1"] == {"conv3": first["top1"]["conv3"]}  # probes are independent of each other
    folder = run_probe(cfg(tmp_path, ck, root, "d", dataset="imagefolder", keep_cache=False,  # 32x32: CIFAR
                           cache=str(tmp_path / "cache-d")))
    assert folder["protocol"] == "cifar" and folder["resolved"]["pooling"] == "none"
    assert folder["top1"] == first["top1"]
    assert not os.path.exists(folder["resolved"]["cache"]["folder"]) and os.path.exists(path)
    feats, labels, chw = fcache.load_layer(path, "train", "conv2")
    assert feats.dtype == np.float16 and feats.shape == (12, 9216) and chw == (256, 6, 6)
    assert labels.tolist() == sorted(labels.tolist())


@pytest.mark.slow  # spawns two processes that import torch: ~5 s idle, 20 s on a busy machine
def test_parallel_layers_give_the_same_result(tmp_path):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    one = run_probe(cfg(tmp_path, ck, root, "a", layers=("conv1", "conv4")))
    two = run_probe(cfg(tmp_path, ck, root, "b", layers=("conv1", "conv4"), jobs=2))
    assert two["top1"] == one["top1"] and two["history"] == one["history"]
    lines = [json.loads(s) for s in open(tmp_path / "b" / LOG)][1:]
    assert sorted((r["layer"], r["epoch"]) for r in lines if "layer" in r) == [("conv1", 1), ("conv1", 2),
                                                                               ("conv4", 1), ("conv4", 2)]


def test_cache_round_trip_matches_backbone(tmp_path):
    from probe.backbone import load_backbone
    from probe.data import load_cifar
    from train.loader import prepare

    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    bb = load_backbone(ck)
    _, tr, te = load_cifar("imagefolder", root)
    path = str(tmp_path / "entry")
    stats = fcache.ensure(bb, [tr], ["conv3"], path, batch_size=5, workers=0, device=torch.device("cpu"),
                          dtype="float32")
    assert stats["train"]["backbone_batches"] == 3
    feats, _, _ = fcache.load_layer(path, "train", "conv3")
    x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in tr.files])
    want = bb.features(prepare(x, torch.device("cpu")), ["conv3"])["conv3"].flatten(1).numpy()
    np.testing.assert_allclose(feats, want, rtol=1e-5, atol=1e-5)
    assert fcache.status(fcache.layer_file(path, "train", "conv3"), tr, bb.encoder_hash) == ""
    assert fcache.status(fcache.layer_file(path, "train", "conv4"), tr, bb.encoder_hash) is None
    assert sorted(os.listdir(path)) == ["train.conv3.features", "train.conv3.json"]  # no temporary file left


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cli_cifar_pickles(tmp_path, dataset):
    import pickle

    if dataset == "cifar10":  # five train batches of 6 + a test batch of 6
        sub, sizes, key, n = "cifar-10-batches-py", {f"data_batch_{i}": 6 for i in range(1, 6)}, b"labels", 10
        sizes["test_batch"] = 6
    else:
        sub, sizes, key, n = "cifar-100-python", {"train": 30, "test": 6}, b"fine_labels", 100
    (tmp_path / sub).mkdir()
    rng = np.random.default_rng(0)
    for name, count in sizes.items():
        with open(tmp_path / sub / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (count, 3072), dtype=np.uint8),
                         key: list(rng.integers(0, n, count))}, f)
    ck = make_ckpt(tmp_path)
    r = CliRunner().invoke(main, ["--checkpoint", ck, "--dataset", dataset, "--data-root", str(tmp_path),
                                  "--out", str(tmp_path / "o"),
                                  "--epochs", "1", "--workers", "0", "--batch-size", "8", "--layers", "conv1,conv4",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    res = json.load(open(tmp_path / "o" / RESULT))
    assert res["layers"] == ["conv1", "conv4"] and res["resolved"]["train_count"] == 30
    assert res["resolved"]["num_classes"] == n and res["backbone_unchanged"] is True
    assert res["checkpoint"]["method"] == "random" and len(res["checkpoint"]["sha256"]) == 64


def test_cli_imagefolder_ten_crop(tmp_path):
    # 40x40 images: --protocol auto picks the ImageNet-style protocol (32x32 would mean CIFAR-style)
    root = make_tree(tmp_path / "tree", splits=("train", "val"), per_class=2, size=40)
    ck, out = make_ckpt(tmp_path, "alexnet"), tmp_path / "o"
    args = ["--checkpoint", ck, "--dataset", "imagefolder", "--data-root", root, "--out", str(out), "--epochs", "2",
            "--workers", "0", "--batch-size", "4", "--resize", "72", "--crop", "64", "--layers", "conv1,conv5",
            "--device", "cpu", "--ten-crop-average", "logits", "--label", "toy", "--threads", "1"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    res = json.load(open(out / RESULT))
    assert res["protocol"] == "imagenet" and res["label"] == "toy" and res["backbone_unchanged"] is True
    assert res["resolved"]["dims"] == {"conv1": 9600, "conv5": 9216}
    assert res["resolved"]["eval_count"] == 6 and res["resolved"]["pooling"] == "paper"
    assert all(0 <= a <= 100 for a in res["top1"].values())
    lines = [json.loads(s) for s in open(out / LOG)]
    assert "config" in lines[0] and [ln["epoch"] for ln in lines[1:] if "epoch" in ln] == [1, 2]
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "--overwrite" in again.output


@pytest.mark.parametrize("problem,expect", [
    ("no_val", "no val/ or test/"),
    ("no_train", "no train/ folder"),
    ("bad_ckpt", "not a readable checkpoint"),
    ("bad_layer", "has no such layer"),
    ("released_small", "AlexNet conv1..conv5 only"),
])
def test_cli_bad_input_is_one_line(tmp_path, problem, expect):
    root = make_tree(tmp_path / "tree", splits=("train",) if problem == "no_val" else ("train", "val"),
                     per_class=1)
    if problem == "no_train":
        root = str(tmp_path / "tree" / "val")
    ck = make_ckpt(tmp_path)
    if problem == "bad_ckpt":
        ck = str(tmp_path / "x.pt")
        open(ck, "w").write("not a checkpoint")
    args = ["--checkpoint", ck, "--dataset", "imagefolder", "--data-root", root, "--out", str(tmp_path / "o"),
            "--epochs", "1", "--workers", "0", "--crop", "32", "--resize", "32", "--device", "cpu",
            "--protocol", "imagenet"]
    args += ["--layers", "conv5"] if problem == "bad_layer" else []
    args += ["--pooling", "released"] if problem == "released_small" else []
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    assert expect in r.output and "Traceback" not in r.output


def test_cifar_mixed_sizes_named(tmp_path):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    Image.new("RGB", (40, 40)).save(os.path.join(root, "train", "c2", "odd.png"))
    r = CliRunner().invoke(main, ["--checkpoint", ck, "--data-root", root, "--out", str(tmp_path / "o"),
                                  "--dataset", "imagefolder", "--protocol", "cifar", "--workers", "0", "--epochs", "1",
                                  "--cache", str(tmp_path / "c")])
    assert r.exit_code == 1 and "odd.png" in r.output and "one image size" in r.output


def test_a_folder_probed_as_cifar10_must_have_its_ten_classes(tmp_path):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)     # 3 classes
    r = CliRunner().invoke(main, ["--checkpoint", ck, "--data-root", root, "--out", str(tmp_path / "o"),
                                  "--workers", "0", "--epochs", "1", "--cache", str(tmp_path / "c")])
    assert r.exit_code == 1 and r.output.strip() == (
        f"Error: --data-root {root}: 3 class folders in train/, but --dataset cifar10 has 10; for another "
        f"labelled folder use --dataset imagefolder")
    assert not (tmp_path / "o").exists()           # a probe that did not run leaves no folder behind


@pytest.mark.data
def test_real_cifar_jpeg_subset(tmp_path, shared_data):
    with tarfile.open(os.path.join(shared_data, "cifar10-jpg.tar.gz")) as t:
        members = [m for m in t.getmembers() if m.isdir() or m.name.split("/")[-1] in ("0000.jpg", "0001.jpg",
                                                                                       "0002.jpg")]
        t.extractall(tmp_path / "cifar", members=members, filter="data")
    ck = make_ckpt(tmp_path)
    res = run_probe(cfg(tmp_path, ck, str(tmp_path / "cifar"), epochs=1))
    assert res["resolved"]["num_classes"] == 10 and res["resolved"]["image_size"] == [32, 32]
    assert res["resolved"]["train_count"] == 30 and res["resolved"]["eval_split"] == "test"


def extract_tiny_subset(tar_path, dest, classes=4, per_class=4):
    """Stream the Tiny-ImageNet tarball once: a few classes (train + val), plus one greyscale val image."""
    keep, grey, counts = set(), None, {}
    with tarfile.open(tar_path, "r|gz") as t:
        for m in t:
            parts = m.name.split("/")
            if not m.isfile() or parts[-1].split(".")[-1] != "JPEG":
                continue
            split, wnid = parts[-3], parts[-2]
            if split == "train" and (wnid in keep or len(keep) < classes) or split == "val" and wnid in keep:
                keep.add(wnid)
                counts[split, wnid] = counts.get((split, wnid), 0) + 1
                if counts[split, wnid] > per_class:
                    continue
            elif not (split == "val" and (wnid in keep or grey is None)):
                continue
            data = t.extractfile(m).read()
            if split == "val" and wnid not in keep:
                if Image.open(io.BytesIO(data)).mode == "L":
                    grey = dest / "grey.JPEG"
                    grey.write_bytes(data)
                continue
            out = dest / split / wnid / parts[-1]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
    return grey


@pytest.mark.data
def test_real_tinyimagenet_greyscale_val(tmp_path, shared_data):
    from probe.data import pil_rgb

    root = tmp_path / "tiny"
    grey = extract_tiny_subset(os.path.join(shared_data, "tinyimagenet200-subset.tar.gz"), root)
    assert grey is not None and Image.open(grey).mode == "L" and pil_rgb(str(grey)).mode == "RGB"
    (root / "val" / sorted(os.listdir(root / "val"))[0] / "grey.JPEG").write_bytes(grey.read_bytes())
    ck = make_ckpt(tmp_path, "alexnet")
    res = run_probe(cfg(tmp_path, ck, str(root), dataset="imagefolder", epochs=1, resize=72, crop=64,
                        layers=("conv1", "conv2")))
    assert res["resolved"]["num_classes"] == 4 and res["resolved"]["train_count"] == 16
    assert res["resolved"]["eval_count"] == 17  # 4 per class + the greyscale one, converted


@pytest.mark.slow
def test_imagefolder_at_224(tmp_path):
    root, ck = make_tree(tmp_path / "tree", splits=("train", "val"), per_class=2), make_ckpt(tmp_path, "alexnet")
    res = run_probe(cfg(tmp_path, ck, root, dataset="imagefolder", epochs=1, pooling="released", protocol="imagenet"))
    assert res["resolved"]["dims"] == {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}


def test_variants_resolve_and_explicit_options_win():
    from probe.linear import VARIANT_OPTIONS, VARIANTS

    paper, released = ProbeConfig(), ProbeConfig(variant="released")
    assert (paper.schedule, paper.ten_crop_average, paper.probe_bn, paper.linear_init, paper.train_crop) == \
        ("paper", "softmax", "feature", "default", "fixed")
    assert (released.schedule, released.ten_crop_average, released.probe_bn, released.linear_init,
            released.train_crop) == ("released", "logits", "channel", "xavier", "resized")
    assert all(getattr(VARIANTS["paper"], n) != getattr(VARIANTS["released"], n) for n in VARIANT_OPTIONS)
    mixed = ProbeConfig(variant="released", probe_bn="feature", protocol="imagenet")
    assert mixed.probe_bn == "feature" and mixed.variant_overrides() == {"probe_bn": "feature"}
    with pytest.raises(ValueError, match="unknown variant"):
        ProbeConfig(variant="both")


def test_cli_variant_released_is_recorded(tmp_path):
    root = make_tree(tmp_path / "tree", splits=("train", "val"), per_class=2, size=40)
    ck = make_ckpt(tmp_path, "alexnet")
    base = ["--checkpoint", ck, "--dataset", "imagefolder", "--data-root", root, "--epochs", "1", "--workers", "0",
            "--batch-size", "4", "--resize", "72", "--crop", "64", "--layers", "conv1,conv5", "--device", "cpu",
            "--variant", "released"]
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    res = json.load(open(tmp_path / "r" / RESULT))
    c = res["config"]
    assert (c["variant"], c["schedule"], c["ten_crop_average"], c["probe_bn"], c["linear_init"], c["train_crop"]) == \
        ("released", "released", "logits", "channel", "xavier", "resized")
    assert res["resolved"]["pooling"] == "released" and res["resolved"]["variant"] == {"name": "released",
                                                                                      "overrides": {}}
    assert res["resolved"]["milestones"] == [max(1, round(m / 36)) for m in (10, 20, 30)]
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "m"), "--pooling", "paper", "--probe-bn", "none"])
    assert r.exit_code == 0, r.output
    res = json.load(open(tmp_path / "m" / RESULT))
    assert res["resolved"]["variant"]["overrides"] == {"pooling": "paper", "probe_bn": "none"}
    assert res["config"]["linear_init"] == "xavier" and res["resolved"]["pooling"] == "paper"
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "x"), "--variant", "both"])
    assert r.exit_code == 2 and "'both' is not one of" in r.output


def test_cached_probe_bn_and_init_options_change_the_training(tmp_path):
    root, ck = make_tree(tmp_path / "tree"), make_ckpt(tmp_path)
    losses = {}
    for name, kw in {"feature": {}, "channel": {"probe_bn": "channel"},
                     "xavier": {"linear_init": "xavier"}}.items():
        res = run_probe(cfg(tmp_path, ck, root, name, layers=("conv2",), **kw))
        assert res["config"]["probe_bn"] == kw.get("probe_bn", "feature")
        losses[name] = [r["loss"] for r in map(json.loads, open(tmp_path / name / LOG)) if "loss" in r]
    assert losses["feature"] != losses["channel"] and losses["feature"] != losses["xavier"]


def test_train_crop_options_are_the_named_transforms():
    from torchvision import transforms as T

    from probe.data import imagenet_transforms

    fixed, _ = imagenet_transforms(80, 64, "fixed")
    resized, ten = imagenet_transforms(80, 64, "resized")
    assert [type(t) for t in fixed.transforms[:2]] == [T.Resize, T.RandomCrop]
    rrc = resized.transforms[0]
    assert isinstance(rrc, T.RandomResizedCrop) and rrc.size == (64, 64) and rrc.scale == (0.08, 1.0)
    assert rrc.ratio == pytest.approx((3 / 4, 4 / 3))
    img = Image.new("RGB", (50, 120))
    assert resized(img).shape == fixed(img).shape == (3, 64, 64) and ten(img).shape == (10, 3, 64, 64)
    with pytest.raises(ValueError, match="train crop"):
        imagenet_transforms(80, 64, "centre")
