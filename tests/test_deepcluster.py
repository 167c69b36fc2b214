"""DeepCluster trainer: multiplicities and the one-pass mode of the common loader, the epoch loop, resume, small-data errors and the CLI."""
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from augment.manifest import read_manifest
from train import deepcluster as dc
from train.checkpoint import load_checkpoint
from train.loader import make_loader, plan_epoch, random_resized_crop_flip, resize_center_crop, with_transform

# Steps cost the same whatever the batch (26M parameters to update), so few big batches keep tests fast.
TINY = dict(k=8, pca_dim=16, crop=64, batch_size=32, workers=0, device="cpu", kmeans_iters=5,
            shuffle_buffer=64, log_every=1)


def tiny_cfg(toy_set, out, **kw):
    return dc.Config(shards=toy_set, out=str(out), **(TINY | kw))


def epoch_records(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [r for r in map(json.loads, f.read().splitlines()[1:]) if r.get("event") == "epoch"]


# --------------------------------------------------------------------------- streams


def test_plan_with_multiplicities_partitions_and_balances_draws():
    counts, firsts = [20, 5, 13, 11, 1], [0, 20, 25, 38, 49]
    mult = np.random.default_rng(3).integers(0, 4, 50)
    plan = plan_epoch(counts, 0, 2, 3, firsts, mult)
    seen = np.zeros(50, int)
    for pieces in plan:
        for s, k, j in pieces:
            seen[firsts[s] + j:firsts[s] + counts[s]:k] += 1
    assert (seen == 1).all()
    loads = [sum(int(mult[firsts[s] + j:firsts[s] + counts[s]:k].sum()) for s, k, j in p) for p in plan]
    assert max(loads) - min(loads) <= mult.max()


def test_multiplicities_give_every_rank_the_same_number_of_batches(toy_set):
    m = read_manifest(toy_set)
    mult = np.random.default_rng(0).multinomial(m.count, np.full(m.count, 1 / m.count))
    counts = []
    for rank in range(2):
        loader = make_loader(m, batch_size=3, workers=0, seed=0, rank=rank, world_size=2,
                             transform=random_resized_crop_flip(8))
        loader.set_multiplicities(mult)
        counts.append(len(list(loader.epoch(0))))
    assert counts[0] == counts[1] == m.count // (2 * 3)


@pytest.mark.parametrize("workers", [0, 2])
def test_one_pass_visits_every_sample_once_in_centre_crops(toy_set, workers):
    m = read_manifest(toy_set)
    loader = with_transform(make_loader(m, batch_size=5, workers=workers, seed=0), resize_center_crop(64))
    batches = list(loader.once())
    idx = torch.cat([i for _, i in batches])
    assert sorted(idx.tolist()) == list(range(m.count)) and len(batches) == len(loader.once())
    assert all(x.shape[1:] == (3, 64, 64) and x.dtype == torch.uint8 for x, _ in batches)
    again = list(with_transform(make_loader(m, batch_size=5, workers=0, seed=0), resize_center_crop(64)).once())
    order = torch.cat([i for _, i in again])
    first, second = torch.cat([x for x, _ in batches]), torch.cat([x for x, _ in again])
    assert torch.equal(first[idx.argsort()], second[order.argsort()])  # centre crops: no randomness


def draw_epoch(m, labels, k, workers, epoch=0, batch=4):
    mult = dc.cluster.multiplicities(labels, k, m.count, seed=0, epoch=epoch)
    loader = make_loader(m, batch_size=batch, workers=workers, seed=0, shuffle_buffer=32,
                         transform=random_resized_crop_flip(8))
    loader.set_multiplicities(mult)
    batches = list(loader.epoch(epoch))
    assert len(batches) == loader.batches_per_epoch and all(len(i) == batch for _, i in batches)
    return torch.cat([i for _, i in batches]).numpy()


@pytest.mark.parametrize("workers", [0, 2])
def test_uniform_stream_draws_every_nonempty_cluster_about_equally(toy_set, workers):
    m = read_manifest(toy_set)
    sizes = [40, 16, 6, 1, 0, 1, 0, 0]          # very uneven, three empty clusters
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(8), sizes))
    drawn = draw_epoch(m, labels, 8, workers)
    per = np.bincount(labels[drawn], minlength=8)
    dropped = m.count - len(drawn)               # partial batches, at most batch - 1 per worker
    assert dropped < 4 * max(workers, 1)
    assert per[[4, 6, 7]].sum() == 0
    full = per[[0, 1, 2, 3, 5]]
    quota = m.count / 5                          # 12.8 draws per non-empty cluster
    assert full.max() <= np.ceil(quota) and full.min() >= np.floor(quota) - dropped
    # the natural frequencies (40 vs 1) would be nowhere near equal
    assert np.bincount(labels[np.arange(m.count)], minlength=8)[0] > 3 * full.max()


def test_uniform_stream_is_seeded_and_changes_per_epoch(toy_set):
    m = read_manifest(toy_set)
    labels = np.arange(m.count) % 8
    a, b = draw_epoch(m, labels, 8, 0, epoch=0), draw_epoch(m, labels, 8, 0, epoch=0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, draw_epoch(m, labels, 8, 0, epoch=1))


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted two-epoch run on a 64-sample toy set, shared by the tests below."""
    from tests.toyset import make_toy_set

    root = tmp_path_factory.mktemp("dc")
    toy = make_toy_set(str(root / "toy"), count=64, size=32, per_shard=16)
    last = dc.main(tiny_cfg(toy, root / "straight", epochs=2))
    return toy, root / "straight", last


def test_two_epochs_run_and_log_nmi_and_phase_times(straight):
    _, out, last = straight
    recs = epoch_records(out)
    assert [r["epoch"] for r in recs] == [0, 1]
    assert recs[0]["nmi_prev"] is None and 0.0 <= recs[1]["nmi_prev"] <= 1.0
    for r in recs:
        assert {"features_s", "pca_s", "kmeans_s", "train_s", "clusters_empty", "cluster_largest",
                "cluster_median", "loss", "acc"} <= set(r)
        assert np.isfinite(r["loss"]) and r["train_steps"] == 2 and r["complete"]
        assert r["cluster_largest"] <= 64 and 0 <= r["clusters_empty"] < 8
    assert recs[0]["kmeans_seed"] != recs[1]["kmeans_seed"]
    ck = load_checkpoint(str(out))
    assert ck["method"] == "deepcluster" and ck["epoch"] == 2 and ck["encoder_spec"]["sobel"] is False
    assert ck["extra"]["assignment"].shape == (64,) and last["loss"] == recs[1]["loss"]


def test_resume_restores_the_assignment_and_continues_the_same_way(straight, tmp_path):
    toy, out, _ = straight
    split = tmp_path / "split"
    dc.main(tiny_cfg(toy, split, epochs=1))
    first = load_checkpoint(str(split))["extra"]["assignment"]
    dc.main(tiny_cfg(toy, split, epochs=2, resume=True))
    a, b = epoch_records(out), epoch_records(split)
    assert len(b) == 2 and b[1]["epoch"] == 1
    # the resumed epoch measured its NMI against the restored assignment of epoch 0
    ca, cb = load_checkpoint(str(out)), load_checkpoint(str(split))
    assert b[1]["nmi_prev"] == pytest.approx(dc.cluster.nmi(cb["extra"]["assignment"].numpy(), first.numpy()),
                                             abs=1e-5)
    assert torch.equal(ca["extra"]["assignment"], cb["extra"]["assignment"])
    assert a[1]["nmi_prev"] == b[1]["nmi_prev"] and a[1]["loss"] == pytest.approx(b[1]["loss"], rel=1e-5)
    for name, w in ca["encoder"].items():
        torch.testing.assert_close(w, cb["encoder"][name], rtol=1e-4, atol=1e-5, msg=name)


def test_too_few_samples_for_k_is_a_clear_cli_error(toy_set, tmp_path):
    r = CliRunner().invoke(dc.cli, ["--shards", toy_set, "--out", str(tmp_path / "r"), "--k", "100",
                                    "--pca-dim", "16", "--crop", "64", "--device", "cpu"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "fewer than --k 100" in r.output and "lower --k" in r.output
    assert not os.path.exists(tmp_path / "r")    # failed before creating the run folder
    r = CliRunner().invoke(dc.cli, ["--shards", toy_set, "--out", str(tmp_path / "r"), "--k", "8",
                                    "--device", "cpu"])
    assert r.exit_code != 0 and "--pca-dim 256" in r.output


def test_cli_trains_one_epoch_with_the_shared_options(toy_set, tmp_path):
    out = tmp_path / "cli"
    args = ["--shards", toy_set, "--out", str(out), "--k", "4", "--pca-dim", "8", "--crop", "64",
            "--epochs", "1", "--batch-size", "16", "--workers", "0", "--device", "cpu", "--sobel",
            "--kmeans-iters", "3", "--seed", "7", "--max-steps", "1"]
    r = CliRunner().invoke(dc.cli, args)
    assert r.exit_code == 0, r.output
    with open(out / "log.jsonl") as f:
        head = json.loads(f.readline())
    assert head["config"]["k"] == 4 and head["config"]["sobel"] is True and head["config"]["seed"] == 7
    rec = epoch_records(out)[0]
    assert rec["train_steps"] == 1 and not rec["complete"]
    ck = load_checkpoint(str(out))
    assert ck["epoch"] == 0 and ck["encoder_spec"]["sobel"] is True and ck["extra"]["batches_done"] == 1
    r = CliRunner().invoke(dc.cli, args)
    assert r.exit_code != 0 and "--resume" in r.output


def crops_set(out, image_path, count=320, size=64, per_shard=64, seed=0):
    """A shard set of random ``size`` crops of a real image (no renderer: plain crops, PNG)."""
    from PIL import Image

    from augment.manifest import write_manifest
    from augment.shards import sample_key, shard_name, write_shard
    from tests.toyset import encode

    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    with Image.open(image_path) as im:
        arr = np.asarray(im.convert("RGB"))
    shards = []
    for first in range(0, count, per_shard):
        def samples(first=first):
            for i in range(first, min(first + per_shard, count)):
                y, x = rng.integers(0, arr.shape[0] - size), rng.integers(0, arr.shape[1] - size)
                yield sample_key(i), {"png": encode(arr[y:y + size, x:x + size], "png")}
        shards.append(write_shard(os.path.join(out, shard_name(first // per_shard)), first, samples()).to_json())
    write_manifest(out, {"count": count, "size": size, "image_format": "png", "seed": seed,
                         "config": {"crops_of": os.path.basename(image_path), "count": count, "size": size},
                         "sources": [{"name": os.path.basename(image_path), "sha256": "0" * 64}],
                         "shards": shards, "versions": {}})
    return out


@pytest.mark.slow
@pytest.mark.data
def test_real_image_crops_cluster_and_train_with_workers(shared_data, tmp_path):
    """Crops of Image A: random-init features whiten to 64 dims, 3 epochs with 2 workers, NMI logged."""
    toy = crops_set(str(tmp_path / "a"), os.path.join(shared_data, "images", "ameyoko.jpg"))
    out = tmp_path / "run"
    dc.main(tiny_cfg(toy, out, epochs=3, k=16, pca_dim=64, batch_size=32, workers=2))
    recs = epoch_records(out)
    assert len(recs) == 3 and all(r["complete"] and np.isfinite(r["loss"]) for r in recs)
    assert all(0.0 < r["nmi_prev"] <= 1.0 for r in recs[1:])
    assert all(r["clusters_empty"] < 16 for r in recs)
