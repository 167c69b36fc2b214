"""`python -m augment ...`: render, verify, show, info, merge (this module) and publish, fetch (share.py)."""
from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Render, check and share frozen shard sets of single-image augmentations."""
