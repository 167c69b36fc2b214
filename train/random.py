"""The "Random" rows: a seeded, randomly initialised encoder saved in the trainers' checkpoint format.

``python -m train.random --out DIR [--arch alexnet|small] [--seed N]`` writes ``DIR/checkpoint.pt``.
The initialisation is the encoder's own (Kaiming normal, fan-out; BatchNorm at identity), drawn from
``torch.manual_seed(seed)``: the same seed gives the same weights, bit for bit, on the same versions.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import click
import torch

from train.engine import CHECKPOINT, CommonConfig, load_checkpoint, write_bare_checkpoint
from train.models import ARCHS, EncoderSpec, build_encoder

METHOD = "random"


@dataclass(frozen=True)
class Config(CommonConfig):
    arch: str = "alexnet"
    sobel: bool = False

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("arch", "sobel")


def main(cfg: Config) -> str:
    """Write the random-init checkpoint; returns its path. An existing checkpoint is never overwritten."""
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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder for checkpoint.pt.")
@click.option("--arch", type=click.Choice(sorted(ARCHS)), default="alexnet", show_default=True)
@click.option("--sobel/--no-sobel", default=False, show_default=True, help="DeepCluster's Sobel front end.")
@click.option("--seed", type=int, default=0, show_default=True)
def cli(out: str, arch: str, sobel: bool, seed: int) -> None:
    """Write a seeded randomly initialised encoder checkpoint."""
    path = main(Config(out=out, arch=arch, sobel=sobel, seed=seed))
    click.echo(path)


if __name__ == "__main__":
    cli()
