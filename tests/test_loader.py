"""The shard loader: equal batches per rank, order = f(seed, epoch), exact skip, clear errors."""
import io
import os
import tarfile

import click
import numpy as np
import pytest
import torch
from PIL import Image

from tests.toyset import make_toy_set
from train.loader import (center_crop, decode_image, make_loader, plan_epoch, prepare, random_crop_flip,
                        random_resized_crop_flip)


def batches(loader, epoch=0, skip=0):
    return [(x.clone(), i.tolist()) for x, i in loader.epoch(epoch, skip)]


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    # Five shards of very different sizes: the case where webdataset's DDP epochs hang.
    return make_toy_set(str(tmp_path_factory.mktemp("u") / "set"), count=50, size=32, fmt="jpg",
                        shard_counts=[20, 5, 13, 11, 1])


@pytest.mark.parametrize("workers", [0, 2])
def test_equal_batches_on_two_ranks_with_uneven_shards(uneven, workers):
    per_rank = [batches(make_loader(uneven, batch_size=4, workers=workers, seed=0, rank=r, world_size=2))
                for r in range(2)]
    assert [len(b) for b in per_rank] == [50 // (2 * 4)] * 2
    assert all(x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 for b in per_rank for x, _ in b)
    seen = [i for b in per_rank for _, idx in b for i in idx]
    # Balanced pieces: nearly every sample is read once (48 of 50 fit in 12 batches).
    assert len(set(seen)) >= 44 and set(seen) <= set(range(50))


def test_same_seed_same_batches_and_epochs_differ(uneven):
    a = batches(make_loader(uneven, batch_size=4, workers=2, seed=3, transform=random_crop_flip(24)))
    b = batches(make_loader(uneven, batch_size=4, workers=2, seed=3, transform=random_crop_flip(24)))
    assert [i for _, i in a] == [i for _, i in b]
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    other = batches(make_loader(uneven, batch_size=4, workers=0, seed=3), epoch=1)
    again = batches(make_loader(uneven, batch_size=4, workers=0, seed=3), epoch=0)
    assert [i for _, i in other] != [i for _, i in again]
    assert [i for _, i in batches(make_loader(uneven, batch_size=4, workers=0, seed=4))] != \
        [i for _, i in again]


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_resumes_an_epoch_exactly(uneven, workers):
    loader = make_loader(uneven, batch_size=4, workers=workers, seed=1, transform=random_crop_flip(24))
    full = batches(loader, epoch=2)
    for k in (1, 5):
        rest = batches(loader, epoch=2, skip=k)
        assert [i for _, i in rest] == [i for _, i in full[k:]]
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(rest, full[k:]))
    assert len(loader.epoch(2, 5)) == len(full) - 5


def test_plan_partitions_every_sample_and_balances():
    counts = [20, 5, 13, 11, 1]
    plan = plan_epoch(counts, seed=0, epoch=0, n_slots=4)
    got = []
    for pieces in plan:
        for s, k, j in pieces:
            got += [(s, p) for p in range(j, counts[s], k)]
    assert sorted(got) == [(s, p) for s in range(5) for p in range(counts[s])]
    loads = [sum(len(range(j, counts[s], k)) for s, k, j in pieces) for pieces in plan]
    assert max(loads) - min(loads) <= 1


def test_missing_and_resized_shards_are_named(tmp_path):
    d = make_toy_set(str(tmp_path / "s"), count=32, size=32, per_shard=16)
    os.remove(os.path.join(d, "shard-000001.tar"))
    with pytest.raises(click.ClickException, match="shard-000001.tar: shard missing"):
        make_loader(d, batch_size=4, workers=0, seed=0)
    d2 = make_toy_set(str(tmp_path / "t"), count=32, size=32, per_shard=16)
    with open(os.path.join(d2, "shard-000000.tar"), "ab") as f:
        f.write(b"x")
    with pytest.raises(click.ClickException, match="shard-000000.tar: .*damaged"):
        make_loader(d2, batch_size=4, workers=0, seed=0)


def damage(path: str, member: int, where: str) -> None:
    """Overwrite bytes of one member's header or data in place (the file keeps its size)."""
    with tarfile.open(path) as t:
        m = t.getmembers()[member]
    off = m.offset if where == "header" else m.offset_data + 50
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\x07" * 300)


@pytest.mark.parametrize("where,message", [("header", "holds 3 readable samples"),
                                           ("data", "sample 000000019 cannot be decoded")])
@pytest.mark.parametrize("workers", [0, 1])
def test_mid_read_errors_name_the_shard(tmp_path, where, message, workers):
    d = make_toy_set(str(tmp_path / "s"), count=32, size=32, per_shard=16, fmt="jpg")
    damage(os.path.join(d, "shard-000001.tar"), 6, where)   # member 6 = sample 19's .jpg
    # The stream's digest check would name the shard first; this tests the readers' own errors.
    loader = make_loader(d, batch_size=4, workers=workers, seed=0, verify_stream=False)
    with pytest.raises(click.ClickException) as e:
        list(loader.epoch(0))
    assert "shard-000001.tar" in e.value.message and message in e.value.message
    assert "\n" not in e.value.message


@pytest.mark.parametrize("workers", [0, 1])
def test_a_flipped_bit_that_still_decodes_stops_the_stream(tmp_path, workers):
    d = make_toy_set(str(tmp_path / "s"), count=32, size=32, per_shard=16, fmt="jpg")
    path = os.path.join(d, "shard-000001.tar")
    with tarfile.open(path) as t:
        m = t.getmembers()[6]
    with open(path, "r+b") as f:          # one bit deep inside the JPEG's entropy-coded data
        f.seek(m.offset_data + m.size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x04]))
    assert len(list(make_loader(d, batch_size=4, workers=workers, seed=0, verify_stream=False).epoch(0))) == 8
    with pytest.raises(click.ClickException, match="shard-000001.tar: its sha256 differs") as e:
        list(make_loader(d, batch_size=4, workers=workers, seed=0).epoch(0))
    assert "--no-verify-stream" in e.value.message and "\n" not in e.value.message


def test_wrong_size_names_the_option(toy_set):
    with pytest.raises(click.ClickException, match="--size 256"):
        make_loader(toy_set, batch_size=4, workers=0, seed=0, sizes=(256,))
    with pytest.raises(click.ClickException, match="--batch-size"):
        make_loader(toy_set, batch_size=1000, workers=0, seed=0)


def test_prepare_range_and_decoders_agree():
    assert prepare(torch.tensor([0, 255], dtype=torch.uint8), torch.device("cpu")).tolist() == [-1.0, 1.0]
    arr = np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    for how in ("torchvision", "pil"):
        assert torch.equal(decode_image(buf.getvalue(), how), torch.from_numpy(arr).permute(2, 0, 1))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    diff = (decode_image(buf.getvalue()).int() - decode_image(buf.getvalue(), "pil").int()).abs()
    assert diff.float().mean() < 2.0     # two JPEG decoders: equal up to IDCT rounding


def test_native_augmentations_are_seeded_and_sized():
    img = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for t in (random_crop_flip(32), random_resized_crop_flip(24)):
        a, b = t(img, torch.Generator().manual_seed(5)), t(img, torch.Generator().manual_seed(5))
        assert torch.equal(a, b) and a.dtype == torch.uint8
    outs = {random_crop_flip(32)(img, torch.Generator().manual_seed(s)).numpy().tobytes() for s in range(8)}
    assert len(outs) > 1
    assert random_resized_crop_flip(24)(img, torch.Generator()).shape == (3, 24, 24)
    assert torch.equal(center_crop(32)(img, torch.Generator()), img[:, 4:36, 4:36])
    with pytest.raises(ValueError, match="smaller than the 48 crop"):
        random_crop_flip(48)(img, torch.Generator())


# --------------------------------------------------------------------------- speed-path equivalence


def _tar(members: list[tuple[str, bytes]], fmt: int, gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=fmt) as t:
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        t.addfile(d)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt,gz", [(tarfile.USTAR_FORMAT, False), (tarfile.GNU_FORMAT, False),
                                    (tarfile.PAX_FORMAT, False), (tarfile.PAX_FORMAT, True)])
def test_lean_tar_reader_groups_like_webdataset(fmt, gz):
    from webdataset.tariterators import group_by_keys, tar_file_expander

    from train.loader import SKIPPED, tar_samples

    long_dir = "d" * 120            # > 100 characters: ustar prefix field, GNU "L" or pax "x" headers
    members = [("__meta__/000.txt", b"m")]                              # webdataset skips these
    for i in range(5):
        key = f"{long_dir}/{i:03d}" if i % 2 else f"{i:03d}"
        members += [(f"{key}.JPG", bytes([i]) * (100 + 600 * i)), (f"{key}.json", b"{}")]
    members.append(("005.json", b"{}"))                                 # a sample without an image
    data = _tar(members, fmt, gz)
    want = [(s["__key__"], s.get("jpg")) for s in
            group_by_keys(tar_file_expander(iter([{"url": "u", "stream": io.BytesIO(data)}])))]
    got = [(k, bytes(d) if d is not None else None) for k, d in tar_samples(io.BytesIO(data), "jpg")]
    assert got == want and len(got) == 6
    picked = list(tar_samples(io.BytesIO(data), "jpg", k=3, j=1))
    assert [k for k, d in picked if d is not SKIPPED] == [want[1][0], want[4][0]]
    assert bytes(picked[4][1]) == want[4][1]


def test_lean_tar_reader_stops_at_damage_and_flags_truncation():
    from train.loader import TarFormatError, tar_samples

    data = bytearray(_tar([(f"{i:03d}.jpg", b"x" * 700) for i in range(4)], tarfile.USTAR_FORMAT))
    third = 512 + 2 * (512 + 1024)                       # directory header, then two (header + 2 blocks)
    damaged = bytes(data[:third + 100]) + b"\x07" * 50 + bytes(data[third + 150:])
    assert [k for k, _ in tar_samples(io.BytesIO(damaged), "jpg")] == ["000", "001"]
    with pytest.raises(TarFormatError, match="unexpected end of data"):
        list(tar_samples(io.BytesIO(bytes(data[:third + 512 + 300])), "jpg"))


def test_crop_flip_into_matches_plain_slicing():
    from train.loader import CropFlip

    arr = np.random.default_rng(1).integers(0, 256, (40, 44, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    decoded = decode_image(buf.getvalue())                        # C x H x W view of H x W x C memory
    plain = decoded.contiguous()                                  # ordinary C x H x W memory
    assert decoded.stride(0) == 1 and plain.stride(2) == 1
    for img in (decoded, plain):
        for u, flip in (((0.0, 0.99, 0.9), False), ((0.5, 0.2, 0.1), True)):
            out = torch.zeros(3, 32, 32, dtype=torch.uint8)
            CropFlip(32).into(img, u, out)
            y, x = int(u[0] * 9), int(u[1] * 13)
            ref = img[:, y:y + 32, x:x + 32]
            assert torch.equal(out, ref.flip(-1) if flip else ref)
        assert torch.equal(center_crop(32)(img), img[:, 4:36, 6:38])
    assert torch.equal(decode_image(bytearray(buf.getvalue())), decoded)


def test_worker_ring_gives_the_in_process_batches(uneven):
    # One worker plays the same single slot as the in-process loader: same batches, bit for bit,
    # although they travel through the reused shared-memory ring (12 batches through 4 slots).
    for t in (random_crop_flip(24), None):
        kw = dict(batch_size=4, seed=5, transform=t)
        inproc, ring = (batches(make_loader(uneven, workers=w, **kw), epoch=1) for w in (0, 1))
        assert len(ring) == 12 and [i for _, i in ring] == [i for _, i in inproc]
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(ring, inproc))
    loader = make_loader(uneven, batch_size=4, workers=2, seed=5, transform=random_crop_flip(24))
    first = next(iter(loader.epoch(0)))                 # leaving an epoch early does not hang ...
    assert first[0].shape == (4, 3, 24, 24)
    assert len(batches(loader, epoch=0)) == 12          # ... nor block the next epoch's workers


def test_any_transform_still_works_per_sample(uneven):
    kw = dict(batch_size=4, seed=2, transform=random_resized_crop_flip(16))
    a, b = (batches(make_loader(uneven, workers=w, **kw)) for w in (0, 1))
    assert [x.shape for x, _ in a] == [(4, 3, 16, 16)] * 12
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
