"""The shard writer: byte-identical to tarfile's USTAR output, atomic, hashed while written."""
import hashlib
import io
import os
import tarfile

import pytest

from augment.shards import FIXED_MTIME, sample_key, ustar_header, write_shard


def reference_tar(samples) -> bytes:
    """The same archive written by the standard library."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(members[ext]), FIXED_MTIME, 0o644, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(members[ext]))
    return buf.getvalue()


@pytest.mark.parametrize("sizes", [[0], [1, 511, 512, 513], [70_000, 3, 1024], list(range(0, 4000, 397))])
def test_archive_is_byte_identical_to_tarfile_ustar(tmp_path, sizes):
    samples = [(sample_key(i), {"jpg": bytes([i % 251]) * n, "json": b'{"i": %d}' % i}) for i, n in enumerate(sizes)]
    info = write_shard(tmp_path / "s.tar", 0, iter(samples))
    data = (tmp_path / "s.tar").read_bytes()
    assert data == reference_tar(samples)
    assert info.bytes == len(data) and info.sha256 == hashlib.sha256(data).hexdigest() and info.count == len(sizes)
    with tarfile.open(tmp_path / "s.tar") as tar:  # and it reads back member by member, in order
        names = tar.getnames()
        assert names == [f"{k}.{e}" for k, m in samples for e in sorted(m)]
        assert tar.extractfile(names[0]).read() == samples[0][1]["jpg"]


def test_header_checksum_and_fields():
    h = ustar_header("000000007.jpg", 1234)
    assert len(h) == 512 and h[257:265] == b"ustar\x0000"
    stored = int(h[148:154], 8)
    assert stored == sum(h[:148]) + 8 * ord(" ") + sum(h[156:])
    assert int(h[124:135], 8) == 1234 and int(h[136:147], 8) == FIXED_MTIME


def test_bad_names_and_failures_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="dot"):
        write_shard(tmp_path / "a.tar", 0, iter([("a.b", {"jpg": b"x"})]))
    with pytest.raises(ValueError, match="100 bytes"):
        write_shard(tmp_path / "b.tar", 0, iter([("k" * 120, {"jpg": b"x"})]))

    def failing():
        yield sample_key(0), {"jpg": b"x"}
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_shard(tmp_path / "c.tar", 0, failing())
    assert os.listdir(tmp_path) == []  # neither a final nor a partial file survives a failure
