"""Checkpoints: one file per run, written atomically, with a digest of its payload checked on every load.

On disk (version 2) a checkpoint is ``{"format", "version", "sha256", "payload": bytes}`` where
``payload`` is the ``torch.save`` of the checkpoint dict (model, optimisers, config, encoder spec and
weights, RNG states, git revision, library versions). A damaged byte is detected when the file is
loaded, by ``--resume`` and by the probes alike. Version 1 files (the dict itself, no digest) are still
read. ``load_checkpoint`` returns the checkpoint dict in both cases.
"""
from __future__ import annotations

import errno
import io
import os
import shutil
import time
from typing import Any

import click
import torch
from torch import nn

from augment.files import atomic_path, bytes_digest, describe_os_error

CHECKPOINT = "checkpoint.pt"
CKPT_FORMAT = "single-image-ssl/checkpoint"
CKPT_VERSION = 2
# What every reader takes from a checkpoint: one that lacks any of them is refused in one line.
REQUIRED = ("method", "config", "encoder_spec", "encoder")


def save_checkpoint(ck: dict[str, Any], path: str) -> None:
    """Write ``ck`` to ``path`` atomically with a sha256 of its payload; a full disk keeps the old file."""
    buf = io.BytesIO()
    torch.save(ck, buf)
    payload = buf.getvalue()
    outer = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "sha256": bytes_digest(payload), "payload": payload}
    try:
        with atomic_path(path) as tmp:
            torch.save(outer, tmp)
    except OSError as e:
        raise click.ClickException(describe_os_error(e, path, need=len(payload)) + _kept(path)) from None
    except RuntimeError as e:
        # torch's zip writer reports a failed write (a full disk) as RuntimeError, not OSError.
        raise click.ClickException(_write_failed(e, path, len(payload))) from None


def _kept(path: str) -> str:
    """What a failed write left of ``path``: the previous file, when there was one."""
    return f" (the last good {os.path.basename(path)} is kept)" if os.path.isfile(path) else ""


def _write_failed(e: RuntimeError, path: str, need: int) -> str:
    """The one line for a RuntimeError from torch.save: a full disk when the space left is short."""
    kept = _kept(path)
    if "Permission denied" in str(e):    # torch's zip writer wraps the OSError's text
        return describe_os_error(PermissionError(errno.EACCES, "Permission denied", path), path) + kept
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        free = None
    if free is None or free < 2 * need + (1 << 20):   # the new file sits beside the old one until the rename
        return describe_os_error(OSError(errno.ENOSPC, "No space left on device", path), path, need=need) + kept
    return f"{path}: cannot be written ({str(e).splitlines()[0][:200]}); about {need:,} bytes are needed" + kept


def _open(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # pickle, zip and torch errors alike mean "not a checkpoint"
        raise click.ClickException(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                                   f"the file is damaged or not a checkpoint") from None


def load_checkpoint(path: str, require: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint written by any trainer; anything else, damaged bytes, or a checkpoint that lacks
    one of the ``require``d entries (e.g. ``REQUIRED``) is one clear error."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.isfile(path):
        raise click.ClickException(f"{path}: no such checkpoint; train first or pass the run folder's "
                                   f"{CHECKPOINT}")
    ck = _open(path)
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise click.ClickException(f"{path}: not a checkpoint of this project (no {CKPT_FORMAT!r} marker)")
    if ck.get("version", 1) >= 2:
        if "payload" not in ck:
            raise click.ClickException(f"{path}: incomplete checkpoint (it has the checkpoint marker but no "
                                       f"payload); restore it from a copy or train again")
        if bytes_digest(ck["payload"]) != ck.get("sha256"):
            raise click.ClickException(f"{path}: damaged (its payload's sha256 differs from the one recorded "
                                       f"when it was written); restore it from a copy or train again")
        ck = torch.load(io.BytesIO(ck["payload"]), map_location="cpu", weights_only=False)
    missing = [k for k in require if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise click.ClickException(f"{path}: incomplete checkpoint (it lacks {', '.join(missing)}); restore it "
                                   f"from a copy or train again")
    return ck


def state_of(obj: Any) -> dict[str, Any]:
    """``state_dict()`` of a module (unwrapped from DDP) or of an optimiser / scheduler."""
    return (obj.module if hasattr(obj, "module") else obj).state_dict()


def checkpoint_dict(*, method: str, config: dict[str, Any], encoder: nn.Module, state: dict[str, Any],
                    epoch: int, step: int, train_seconds: float, rng: dict[str, Any], git: str,
                    versions: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint layout every reader (``--resume``, the probes, fine-tuning) relies on."""
    enc = encoder.module if hasattr(encoder, "module") else encoder
    return {"format": CKPT_FORMAT, "version": CKPT_VERSION, "method": method, "config": config,
            "encoder_spec": enc.spec.to_dict(), "encoder": enc.state_dict(), "state": state, "epoch": epoch,
            "step": step, "train_seconds": train_seconds, "rng": rng, "git": git, "versions": versions,
            "extra": extra, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
