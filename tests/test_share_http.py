"""fetch and streaming against a local HTTP server on 127.0.0.1 (ephemeral port), started per test."""
from __future__ import annotations

import filecmp
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import click
import pytest
import torch
from click.testing import CliRunner

from augment import share
from augment.__main__ import cli
from augment.manifest import MANIFEST, read_manifest
from tests.faults import LimitedFile
from tests.pictures import one_line_error
from tests.toyset import make_toy_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    """A static file server with HTTP Range support and switchable faults, recording every request."""

    def __init__(self, root: str):
        self.root = root
        self.corrupt: set[str] = set()       # names served with one byte flipped
        self.drop_after: dict[str, int] = {}  # name -> bytes sent before the connection is closed
        self.stall_after: dict[str, int] = {}  # name -> bytes sent before the server hangs
        self.requests: list[tuple[str, str]] = []  # (name, Range header or "")
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/set"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def names(self, name: str) -> list[str]:
        return [r for n, r in self.requests if n == name]

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        name = h.path.rsplit("/", 1)[-1]
        rng = h.headers.get("Range", "")
        self.requests.append((name, rng))
        path = os.path.join(self.root, name)
        if not h.path.startswith("/set/") or not os.path.isfile(path):
            h.send_error(404)
            return
        data = bytearray(open(path, "rb").read())
        if name in self.corrupt:
            data[len(data) // 2] ^= 0xFF
        start = int(rng[len("bytes="):].split("-")[0]) if rng.startswith("bytes=") else 0
        h.send_response(206 if start else 200)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        body = bytes(data[start:])
        if name in self.drop_after:
            h.wfile.write(body[: self.drop_after[name]])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if name in self.stall_after:
            h.wfile.write(body[: self.stall_after[name]])
            h.wfile.flush()
            self.release.wait(30)
            return
        h.wfile.write(body)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    src = make_toy_set(str(tmp_path / "src"), count=64, size=32, per_shard=16)
    s = Server(src)
    yield src, s
    s.close()


def fetch(url: str, out, *args: str):
    return CliRunner().invoke(cli, ["fetch", url, str(out), "--quiet", *args])


def shard_files(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith("shard-"))


def test_fetch_equals_source_byte_for_byte(served, tmp_path):
    src, server = served
    r = fetch(server.url, tmp_path / "out", "--jobs", "3")
    assert r.exit_code == 0, r.output
    m = read_manifest(src)
    names = [e.name for e in m.shards] + [MANIFEST]
    match, mismatch, errors = filecmp.cmpfiles(src, tmp_path / "out", names, shallow=False)
    assert mismatch == [] and errors == [] and sorted(match) == sorted(names)
    assert shard_files(tmp_path / "out") == [e.name for e in m.shards]  # no .partial left behind
    assert read_manifest(tmp_path / "out").id == read_manifest(server.url).id == m.id
    assert m.id in r.output


def test_corrupted_shard_is_refetched_once_then_named(served, tmp_path):
    src, server = served
    server.corrupt.add("shard-000002.tar")
    out = tmp_path / "out"
    line = one_line_error(fetch(server.url, out))
    assert "shard-000002.tar" in line and "sha256" in line
    assert "shard-000001.tar" not in line
    assert len(server.names("shard-000002.tar")) == 2
    assert shard_files(out) == ["shard-000000.tar", "shard-000001.tar", "shard-000003.tar"]
    assert not os.path.exists(out / MANIFEST)  # an incomplete folder is never a set


def test_server_closing_mid_file_keeps_partial_and_resumes_with_range(served, tmp_path):
    src, server = served
    server.drop_after["shard-000001.tar"] = 5000
    out = tmp_path / "out"
    line = one_line_error(fetch(server.url, out, "--jobs", "1"))
    assert "shard-000001.tar" in line and "closed after" in line
    partial = out / "shard-000001.tar.partial"
    assert partial.exists() and 0 < partial.stat().st_size < os.path.getsize(os.path.join(src, "shard-000001.tar"))
    assert not (out / "shard-000001.tar").exists() and not (out / MANIFEST).exists()
    have = partial.stat().st_size
    server.drop_after.clear()
    before = len(server.requests)
    r = fetch(server.url, out)
    assert r.exit_code == 0, r.output
    assert ("shard-000001.tar", f"bytes={have}-") in server.requests[before:]
    assert not any(n == "shard-000000.tar" for n, _ in server.requests[before:])  # complete shards kept
    assert filecmp.cmp(out / "shard-000001.tar", os.path.join(src, "shard-000001.tar"), shallow=False)


def test_fetch_killed_midway_resumes(served, tmp_path):
    src, server = served
    server.stall_after["shard-000000.tar"] = 3000
    out = tmp_path / "out"
    partial = out / "shard-000000.tar.partial"
    proc = subprocess.Popen([sys.executable, "-m", "augment", "fetch", server.url, str(out), "--jobs", "1",
                             "--quiet"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not (partial.exists() and partial.stat().st_size >= 3000) and time.time() < deadline:
            time.sleep(0.05)
        assert partial.exists() and partial.stat().st_size == 3000
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / MANIFEST).exists() and not (out / "shard-000000.tar").exists()
    server.stall_after.clear()
    server.release.set()
    r = fetch(server.url, out)
    assert r.exit_code == 0, r.output
    assert ("shard-000000.tar", "bytes=3000-") in server.requests
    assert filecmp.cmp(out / "shard-000000.tar", os.path.join(src, "shard-000000.tar"), shallow=False)


def test_expect_refuses_other_set_before_any_shard(served, tmp_path):
    src, server = served
    line = one_line_error(fetch(server.url, tmp_path / "out", "--expect", "sis1-" + "0" * 32))
    assert "sis1-" + "0" * 32 in line and read_manifest(src).id in line
    assert [n for n, _ in server.requests] == [MANIFEST]
    assert not (tmp_path / "out").exists()


def test_edited_manifest_id_is_detected(served, tmp_path):
    src, server = served
    path = os.path.join(src, MANIFEST)
    data = json.load(open(path))
    data["id"] = "sis1-" + "f" * 32  # untouched content, forged identifier
    json.dump(data, open(path, "w"))
    line = one_line_error(fetch(server.url, tmp_path / "out"))
    assert "disagrees with its content" in line
    assert [n for n, _ in server.requests] == [MANIFEST]


def test_404_unreachable_and_not_a_manifest(served, tmp_path):
    src, server = served
    line = one_line_error(fetch(server.url.replace("/set", "/nothing"), tmp_path / "a"))
    assert "404" in line and "manifest.json" in line
    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = one_line_error(fetch(f"http://127.0.0.1:{port}/set", tmp_path / "b"))
    assert "refused" in line.lower() and str(port) in line
    with open(os.path.join(src, MANIFEST), "w") as f:
        f.write("<html>not found</html>")
    line = one_line_error(fetch(server.url, tmp_path / "c"))
    assert "not a shard-set manifest" in line
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "c")


def test_missing_shard_on_server_is_named(served, tmp_path):
    src, server = served
    os.remove(os.path.join(src, "shard-000003.tar"))
    line = one_line_error(fetch(server.url, tmp_path / "out"))
    assert "shard-000003.tar" in line and "404" in line
    assert not (tmp_path / "out" / "shard-000003.tar").exists()


def test_full_disk_is_one_line_and_resumable(served, tmp_path, monkeypatch):
    src, server = served
    real_open = open

    def fake_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return LimitedFile(f, 1000) if str(path).endswith(".partial") and "b" in mode else f

    monkeypatch.setattr(share, "open", fake_open, raising=False)
    out = tmp_path / "out"
    line = one_line_error(fetch(server.url, out, "--jobs", "2"))
    assert "No space left on device" in line and ".partial" in line and "run the same command" in line
    assert shard_files(out) == [n for n in shard_files(out) if n.endswith(".partial")]  # nothing final
    monkeypatch.undo()
    r = fetch(server.url, out)
    assert r.exit_code == 0, r.output
    assert sorted(filecmp.cmpfiles(src, out, shard_files(src), shallow=False)[0]) == shard_files(src)


def test_streaming_from_url_trains_one_step_without_curl(served, monkeypatch):
    """make_loader reads the set over HTTP (urllib, not webdataset's curl) and yields the same batches."""
    import webdataset.gopen  # noqa: F401  (the loader no longer imports webdataset: load it to patch it)

    from train.loader import make_loader, prepare, random_crop_flip
    from train.models import EncoderSpec, SmallClassifier

    def no_curl(*a, **kw):
        raise AssertionError("webdataset's curl opener must not be used")

    monkeypatch.setitem(sys.modules["webdataset.gopen"].gopen_schemes, "http", no_curl)
    src, server = served
    kw = dict(batch_size=8, workers=0, seed=3, transform=random_crop_flip(32))
    remote, local = make_loader(server.url, **kw), make_loader(src, **kw)
    assert remote.batches_per_epoch == local.batches_per_epoch == 64 // 8
    (x, idx), (x_local, idx_local) = next(iter(remote.epoch(0))), next(iter(local.epoch(0)))
    assert torch.equal(x, x_local) and torch.equal(idx, idx_local)
    assert any(n.startswith("shard-") for n, _ in server.requests)
    # One RotNet-like optimisation step on the streamed batch: rotate by k * 90 degrees, predict k.
    torch.manual_seed(0)
    model = SmallClassifier(EncoderSpec(arch="small"), 4, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs = prepare(x, torch.device("cpu"))
    rotated = torch.cat([torch.rot90(inputs, k, (2, 3)) for k in range(4)])
    labels = torch.arange(4).repeat_interleave(len(inputs))
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(rotated), labels)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_rotnet_cli_streams_from_url(served, tmp_path):
    rotnet = pytest.importorskip("train.rotnet")
    src, server = served
    r = CliRunner().invoke(rotnet.cli, ["--shards", server.url, "--out", str(tmp_path / "run"), "--arch", "small",
                                        "--batch-size", "8", "--workers", "0", "--device", "cpu",
                                        "--max-steps", "1", "--epochs", "1", "--eval-batches", "0"])
    assert r.exit_code == 0, r.output
    assert os.path.isfile(tmp_path / "run" / "checkpoint.pt")
    assert any(n.startswith("shard-") for n, _ in server.requests)


def test_click_exception_type_is_used():
    """fetch_set reports bad input as ClickException (one line, exit 1), the contract the CLI relies on."""
    with pytest.raises(click.ClickException, match="no manifest.json there"):
        share.fetch_set(share.FetchConfig(url=os.path.join(ROOT, "no-such-set"), out="/tmp/unused"))


# --------------------------------------------------------------------------- issue #23: damaged and vanishing servers


def test_a_truncated_shard_on_the_server_is_named_damaged_not_run_again(served, tmp_path):
    src, server = served
    path = os.path.join(src, "shard-000002.tar")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    out = tmp_path / "out"
    for _ in range(2):  # a second run says the same: nothing to gain by running again
        line = one_line_error(fetch(server.url, out))
        assert line == (f"Error: {server.url}: 1 shard(s) not fetched after 2 attempts: shard-000002.tar: the "
                        f"server's copy has {size // 2:,} bytes, manifest says {size:,}; the copy on the server "
                        f"is damaged: ask the publisher to re-publish")
    assert shard_files(out) == ["shard-000000.tar", "shard-000001.tar", "shard-000003.tar"]
    assert not (out / MANIFEST).exists()


def failing_server(src: str, shards: int, fault: str, after: int) -> Server:
    """A server of ``src`` whose every shard fails the same way (``stall_after`` or ``drop_after``) after
    ``after`` bytes."""
    server = Server(src)
    getattr(server, fault).update({f"shard-{i:06d}.tar": after for i in range(shards)})
    return server


def test_a_server_that_stops_sending_ends_the_fetch_early_in_one_line_and_a_later_run_resumes(tmp_path):
    src = make_toy_set(str(tmp_path / "src"), count=128, size=32, per_shard=16)  # 8 shards
    server = failing_server(src, 8, "stall_after", 1000)
    try:
        out = tmp_path / "out"
        line = one_line_error(fetch(server.url, out, "--jobs", "2", "--timeout", "1"))
        assert line.startswith(f"Error: {server.url}: the server stopped answering (3 connections in a row failed, "
                               f"the last: timed out after ")
        assert line.endswith("); 0 of 8 shards are here, 8 left: run the same command again to resume")
        asked = {n for n, _ in server.requests if n.startswith("shard-")}
        assert len(asked) <= 4  # stopped early: most shards were never asked for
        partials = sorted(n for n in os.listdir(out) if n.endswith(".partial"))
        have = {n[: -len(".partial")]: (out / n).stat().st_size for n in partials}
        assert have and all(v > 0 and v % 1000 == 0 for v in have.values())
        server.stall_after.clear()
        before = len(server.requests)
        r = fetch(server.url, out)
        assert r.exit_code == 0, r.output
        assert all((n, f"bytes={v}-") in server.requests[before:] for n, v in have.items())
        assert read_manifest(out).id == read_manifest(src).id
    finally:
        server.close()


def test_a_server_dying_mid_fetch_is_one_short_line(tmp_path):
    """Every connection breaks mid-file (a server being killed): one short line, not one per shard."""
    src = make_toy_set(str(tmp_path / "src"), count=256, size=32, per_shard=16)  # 16 shards
    server = failing_server(src, 16, "drop_after", 100)
    try:
        line = one_line_error(fetch(server.url, tmp_path / "out", "--jobs", "1"))
        assert line.startswith(f"Error: {server.url}: the server stopped answering (3 connections in a row failed, "
                               f"the last: connection closed after ")
        assert line.endswith("; 0 of 16 shards are here, 16 left: run the same command again to resume")
        assert len(line) < 300 and "shard-000002.tar" not in line
    finally:
        server.close()
