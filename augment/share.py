"""Sharing shard sets between labs: publish, fetch, verify, stream from a URL (issue 7)."""
from __future__ import annotations

from augment.cli import cli  # noqa: F401  (commands register themselves on the group)
