import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Real data lives beside the project; tests that need it skip with this reason when it is absent.
SHARED_DATA = os.environ.get("SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


@pytest.fixture
def shared_data():
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real data not found at {SHARED_DATA} (set SHARED_DATA to ../shared/data)")
    return SHARED_DATA


@pytest.fixture
def toy_set(tmp_path):
    from tests.toyset import make_toy_set

    return make_toy_set(str(tmp_path / "toy"), count=64, size=32, per_shard=16)


@pytest.fixture(autouse=True)
def user_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty user cache (feature caches, named images), never the real ~/.cache."""
    path = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(path))
    return path


@pytest.fixture(autouse=True)
def sigint_restored():
    """A test that sets SIGINT's handler (a worker's SIG_IGN run in-process) must not leak it into later tests:
    a child process inherits an ignored SIGINT, and a later Ctrl-C test would then see no interrupt."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)
