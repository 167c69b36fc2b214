"""The "Random" rows: a seeded, randomly initialised encoder saved in the trainers' checkpoint format.

``python -m train.random --out DIR [--arch alexnet|small] [--seed N]`` writes ``DIR/checkpoint.pt``.
The initialisation is the encoder's own (Kaiming normal, fan-out; BatchNorm at identity), drawn from
``torch.manual_seed(seed)``: the same seed gives the same weights, bit for bit, on the same versions.
(The command keeps its name through the two-line ``train/random.py``; the code lives here so that no
module of the package is named like the standard library's ``random``.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import click
import torch

from train.checkpoint import CHECKPOINT, load_checkpoint
from train.config import CommonConfig, command, option
from train.models import ARCHS, EncoderSpec, build_encoder
from train.run import write_bare_checkpoint

METHOD = "random"


@dataclass(frozen=True)
class Config(CommonConfig):
    out: str = option("", "Run folder for checkpoint.pt.")
    arch: str = option("alexnet", "Encoder.", choices=tuple(sorted(ARCHS)))
    sobel: bool = option(False, "DeepCluster's Sobel front end.")

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("arch", "sobel")
    UNUSED: ClassVar[tuple[str, ...]] = ("shards", "batch_size", "workers", "device", "epochs", "max_steps", "stop_at_step",
                                         "resume", "amp", "log_every", "time_budget", "verify_stream",
                                         "channels_last", "decode_device")


def main(cfg: Config) -> str:
    """Write the random-init checkpoint; returns its path. An existing checkpoint is never overwritten."""
    if not cfg.out:
        raise click.ClickException("--out is missing: give the run folder to write checkpoint.pt into")
    path = os.path.join(cfg.out, CHECKPOINT)
    if os.path.exists(path):
        raise click.ClickException(f"{path} exists; choose another --out (a checkpoint is never overwritten)")
    # The encoder is the only consumer of the global generator here, so its weights depend on seed alone.
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(EncoderSpec(arch=cfg.arch, sobel=cfg.sobel))
    write_bare_checkpoint(path, method=METHOD, cfg=cfg, encoder=encoder,
                          extra={"init": "kaiming_normal fan_out; BatchNorm weight 1, bias 0"})
    load_checkpoint(path)  # fail now, not in the probe, if the write went wrong
    return path


cli = command(Config, lambda cfg: click.echo(main(cfg)), "Write a seeded randomly initialised encoder checkpoint.")
