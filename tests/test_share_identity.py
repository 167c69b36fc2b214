"""The content identifier: its canonical form, stability, and what changes it."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile

import click
import pytest
from click.testing import CliRunner

from augment.__main__ import cli
from augment.manifest import (MANIFEST, check_identity, content_id, read_manifest, read_manifest_text,
                              write_manifest)
from augment.share import verify_shards
from augment.files import file_digest
from tests.toyset import make_toy_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PAYLOAD = {
    "format": "single-image-ssl/shards", "format_version": 1,
    "config": {"size": 32, "scale": [0.1, 1.0], "lr": 2 / 3, "eps": 1e-7, "name": "Ameyoko-\u00e9",
               "jitter": True},
    "sources": [{"name": "a.jpg", "sha256": "ab" * 32}],
    "shards": [{"name": "shard-000000.tar", "first": 0, "count": 5, "bytes": 10240, "sha256": "cd" * 32}],
    "count": 5, "size": 32, "versions": {"torch": "x"}, "host": "anything",
}
# The canonical form as docs/sharing.md specifies it, written out by hand.
CANONICAL = ('{"config":{"eps":1e-07,"jitter":true,"lr":0.6666666666666666,"name":"Ameyoko-\\u00e9",'
             '"scale":[0.1,1.0],"size":32},"format":"single-image-ssl/shards","format_version":1,'
             '"shards":[["shard-000000.tar",5,"' + "cd" * 32 + '"]],"sources":["' + "ab" * 32 + '"]}')


def test_identifier_follows_the_documented_canonical_form():
    assert content_id(PAYLOAD) == "sis1-" + hashlib.sha256(CANONICAL.encode("ascii")).hexdigest()[:32]


def test_identifier_ignores_key_order_versions_and_host_and_survives_a_json_round_trip():
    shuffled = json.loads(json.dumps(PAYLOAD, sort_keys=False))
    shuffled = dict(reversed(list(shuffled.items())))
    shuffled["config"] = dict(reversed(list(shuffled["config"].items())))
    shuffled["versions"], shuffled["host"] = {"torch": "other"}, "elsewhere"
    assert content_id(shuffled) == content_id(PAYLOAD)
    assert content_id(json.loads(json.dumps(PAYLOAD, indent=1))) == content_id(PAYLOAD)


def test_identifier_is_the_same_in_another_process_with_other_hash_seed_and_locale():
    code = ("import json,sys; from augment.manifest import content_id; "
            "print(content_id(json.load(sys.stdin)))")
    env = dict(os.environ, PYTHONHASHSEED="12345", LC_ALL="C", LANG="C")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(PAYLOAD), capture_output=True,
                         text=True, env=env, cwd=ROOT, check=True).stdout.strip()
    assert out == content_id(PAYLOAD)


def test_identifier_changes_with_config_and_refuses_nan():
    other = json.loads(json.dumps(PAYLOAD))
    other["config"]["size"] = 64
    assert content_id(other) != content_id(PAYLOAD)
    other["config"]["lr"] = float("nan")
    with pytest.raises(ValueError):
        content_id(other)


def test_two_renders_of_the_same_set_share_an_identifier(tmp_path):
    a = make_toy_set(str(tmp_path / "a"), count=24, per_shard=8, seed=1)
    b = make_toy_set(str(tmp_path / "b"), count=24, per_shard=8, seed=1)
    c = make_toy_set(str(tmp_path / "c"), count=24, per_shard=8, seed=2)
    assert read_manifest(a).id == read_manifest(b).id != read_manifest(c).id


def test_fetched_copy_has_the_same_identifier(tmp_path):
    src = make_toy_set(str(tmp_path / "src"), count=24, per_shard=8)
    r = CliRunner().invoke(cli, ["fetch", src, str(tmp_path / "copy"), "--quiet"])
    assert r.exit_code == 0, r.output
    copy = read_manifest(tmp_path / "copy")
    assert copy.id == read_manifest(src).id == content_id(copy.raw)
    assert verify_shards(copy, progress=False) == []


def test_one_changed_shard_changes_the_identifier_and_fails_the_old_one(tmp_path):
    src = make_toy_set(str(tmp_path / "src"), count=24, per_shard=8)
    m, _ = read_manifest_text(src)
    path = os.path.join(src, "shard-000001.tar")
    with tarfile.open(path) as tar:
        image = next(t for t in tar.getmembers() if t.name.endswith(".png"))
    data = bytearray(open(path, "rb").read())
    data[image.offset_data + image.size // 2] ^= 0x01  # one bit of one image
    open(path, "wb").write(bytes(data))
    assert verify_shards(read_manifest(src), progress=False) == ["shard-000001.tar: sha256 differs from the manifest"]
    raw = dict(m.raw)
    raw["shards"] = [dict(s, sha256=file_digest(os.path.join(src, s["name"]))) for s in raw["shards"]]
    new_id = write_manifest(src, raw)
    assert new_id != m.id and read_manifest(src).id == new_id
    assert verify_shards(read_manifest(src), progress=False) == []


def test_a_forged_stored_id_is_detected(tmp_path):
    src = make_toy_set(str(tmp_path / "src"), count=8, per_shard=8)
    path = os.path.join(src, MANIFEST)
    data = json.load(open(path))
    data["config"]["count"] = 9  # content edited, stored id left alone
    json.dump(data, open(path, "w"))
    with pytest.raises(click.ClickException, match="disagrees with its content"):
        check_identity(read_manifest(src))
    r = CliRunner().invoke(cli, ["fetch", src, str(tmp_path / "copy"), "--quiet"])
    assert r.exit_code == 1 and "disagrees with its content" in r.output
    assert not os.path.exists(tmp_path / "copy")


def test_verify_reports_a_forged_stored_id(tmp_path):
    src = make_toy_set(str(tmp_path / "src"), count=8, per_shard=8)
    assert CliRunner().invoke(cli, ["verify", src]).exit_code == 0
    path = os.path.join(src, MANIFEST)
    data = json.load(open(path))
    data["id"] = "sis1-" + "0" * 32
    json.dump(data, open(path, "w"))
    r = CliRunner().invoke(cli, ["verify", src])
    assert r.exit_code == 1 and "disagrees with its content" in r.output
