"""publish: verify, copy to a folder or fsspec URL, CARD.md, manifest last; fetch back from fsspec."""
from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import uuid

import fsspec
import pytest
from click.testing import CliRunner

from augment import share
from augment.__main__ import cli
from augment.manifest import MANIFEST, read_manifest
from tests.toyset import make_toy_set


@pytest.fixture
def small_set(tmp_path):
    return make_toy_set(str(tmp_path / "src"), count=24, size=16, per_shard=8)


def run(*args: str):
    return CliRunner().invoke(cli, [*args, "--quiet"])


def test_publish_to_folder_copies_bytes_and_writes_card(small_set, tmp_path):
    dest = tmp_path / "pub"
    r = run("publish", small_set, str(dest), "--public-url", "https://example.org/sets/toy")
    assert r.exit_code == 0, r.output
    m = read_manifest(small_set)
    names = [e.name for e in m.shards] + [MANIFEST]
    assert sorted(filecmp.cmpfiles(small_set, dest, names, shallow=False)[0]) == sorted(names)
    card = (dest / share.CARD).read_text()
    assert card.count(m.id) >= 3  # title, identifier, fetch --expect, citation
    assert f"python -m augment fetch https://example.org/sets/toy DIR --expect {m.id}" in card
    for source in m.sources:
        assert source["sha256"] in card
    assert json.dumps(m.config, indent=1, sort_keys=True) in card
    assert "Asano" in card and "@inproceedings" in card and f"{m.count} patches" in card
    # Publishing the same set again is idempotent.
    assert run("publish", small_set, str(dest)).exit_code == 0


def test_publish_then_fetch_through_fsspec_memory(small_set, tmp_path):
    url = f"memory://sets-{uuid.uuid4().hex}/toy"
    assert run("publish", small_set, url).exit_code == 0
    r = run("fetch", url, str(tmp_path / "copy"), "--jobs", "2")
    assert r.exit_code == 0, r.output
    names = os.listdir(small_set)
    assert sorted(filecmp.cmpfiles(small_set, tmp_path / "copy", names, shallow=False)[0]) == sorted(names)
    assert (tmp_path / "copy" / share.CARD).is_file()
    assert read_manifest(tmp_path / "copy").id == read_manifest(small_set).id == read_manifest(url).id


def test_manifest_is_written_last(small_set, monkeypatch):
    fs = fsspec.filesystem("memory")
    writes: list[str] = []
    real_put, real_pipe = fs.put_file, fs.pipe_file
    monkeypatch.setattr(fs, "put_file", lambda lpath, rpath, **kw: (writes.append(rpath), real_put(lpath, rpath)))
    monkeypatch.setattr(fs, "pipe_file", lambda path, value, **kw: (writes.append(path), real_pipe(path, value)))
    share.publish_set(share.PublishConfig(small_set, f"memory://order-{uuid.uuid4().hex}", progress=False))
    assert writes[-1].endswith("/" + MANIFEST) and writes[-2].endswith("/" + share.CARD)
    assert sum(w.endswith(".tar") for w in writes) == 3


def test_publish_refuses_a_damaged_set_and_names_the_shard(small_set, tmp_path):
    with open(os.path.join(small_set, "shard-000002.tar"), "r+b") as f:
        f.seek(2000)
        f.write(b"\x00garbage")
    r = run("publish", small_set, str(tmp_path / "pub"))
    assert r.exit_code == 1 and "shard-000002.tar" in r.output and "sha256" in r.output
    assert "shard-000001.tar" not in r.output
    assert not os.path.exists(tmp_path / "pub" / MANIFEST)


def test_publish_refuses_a_destination_holding_another_set(small_set, tmp_path):
    other = make_toy_set(str(tmp_path / "other"), count=8, size=16, per_shard=8, seed=5)
    assert run("publish", other, str(tmp_path / "pub")).exit_code == 0
    r = run("publish", small_set, str(tmp_path / "pub"))
    assert r.exit_code == 1 and read_manifest(other).id in r.output and "empty destination" in r.output
    assert read_manifest(tmp_path / "pub").id == read_manifest(other).id


def test_fetch_refuses_a_folder_holding_another_set(small_set, tmp_path):
    other = make_toy_set(str(tmp_path / "other"), count=8, size=16, per_shard=8, seed=5)
    r = run("fetch", small_set, other)
    assert r.exit_code == 1 and "another set" in r.output
    assert read_manifest(other).id != read_manifest(small_set).id


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_publish_to_s3_without_the_extra_names_it(small_set):
    r = run("publish", small_set, "s3://bucket/toy")
    assert r.exit_code == 1 and "pip install -e '.[s3]'" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_publish_refuses_a_url_source(tmp_path):
    r = run("publish", "https://example.org/set", str(tmp_path / "pub"))
    assert r.exit_code == 1 and "fetch it first" in r.output
