"""`python -m probe.style`: neural style transfer on an encoder's conv layers (the paper's Fig. 3).

Gatys et al. (2016) as the official PyTorch tutorial the paper cites implements it: the image is
optimised with L-BFGS, starting from the content image, to match the content image's activations at
the content layers and the style image's Gram matrices (each divided by C*H*W) at the style layers,
taken at each conv's output before its ReLU; loss = content_weight * content + style_weight * style.
The tutorial's layer names carry over to AlexNet unchanged: content conv4, style conv1-conv5 ("all
CNN features", the paper says); the four-layer ``small`` encoder gets style conv1-conv4. Ours, where
the tutorial's settings do not carry over to other networks: each layer's squared error is divided by
its target's mean square (``loss_scale="relative"``), so one pair of weights suits encoders whose
activation scales differ, and L-BFGS uses a strong-Wolfe line search. The encoder is the frozen,
BatchNorm-folded backbone every probe reads. ``--compare CKPT2`` runs the same optimisation on a
second encoder and draws both results beside the content and style images. Choices: docs/figures.md.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any

import click
import torch

from probe.backbone import Backbone, activations, load_backbone
from probe.pictures import (describe_backbone, describe_file, panel_figure, read_image, to_encoder, to_numpy,
                            write_config)
from train.run import resolve_device


@dataclass(frozen=True)
class StyleConfig:
    """Every setting of a style transfer; the CLI's defaults come from here."""

    steps: int = 300                          # L-BFGS loss evaluations (the tutorial's num_steps)
    size: int = 256                           # shorter side of the content and style images
    content_layers: tuple[str, ...] = ("conv4",)
    style_layers: tuple[str, ...] = ()        # (): every conv layer of the encoder
    features: str = "conv"                    # "conv": each conv's output before its ReLU (the tutorial's);
                                              # "relu": after it (Gatys et al.'s Caffe VGG, in-place ReLU)
    loss_scale: str = "relative"              # "relative": each layer's loss / its target's mean square;
                                              # "tutorial": unscaled (its weights: 1 and 1e6, for VGG-19)
    content_weight: float = 1.0
    style_weight: float = 10.0                # chosen by eye with relative losses (docs/figures.md)
    init: str = "content"                     # "content" (tutorial) or "noise" (Gatys et al.'s white noise)
    seed: int = 0                             # for init = "noise"
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix of ``1 x C x H x W`` features, divided by C*H*W (the tutorial's normalisation)."""
    _, c, h, w = f.shape
    f = f.reshape(c, h * w)
    return f @ f.t() / (c * h * w)


class StyleLoss:
    """Content and style targets of one encoder, and the weighted loss of an image against them."""

    def __init__(self, bb: Backbone, content: torch.Tensor, style: torch.Tensor, cfg: StyleConfig):
        self.bb, self.cfg = bb, cfg
        self.layers = list(dict.fromkeys(cfg.content_layers + cfg.style_layers))
        with torch.no_grad():
            self.content = {n: f for n, f in self.features(content).items() if n in cfg.content_layers}
            self.style = {n: gram(f) for n, f in self.features(style).items() if n in cfg.style_layers}

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return activations(self.bb.encoder, to_encoder(x), self.layers, pre_activation=self.cfg.features == "conv")

    def distance(self, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error, relative to the target's mean square unless ``loss_scale`` is "tutorial"."""
        mse = torch.nn.functional.mse_loss(value, target)
        return mse if self.cfg.loss_scale == "tutorial" else mse / target.pow(2).mean().clamp(min=1e-12)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted content loss, weighted style loss) of the image ``x`` in [0, 1]."""
        feats = self.features(x)
        content = sum(self.distance(feats[n], t) for n, t in self.content.items())
        style = sum(self.distance(gram(feats[n]), t) for n, t in self.style.items())
        return self.cfg.content_weight * content, self.cfg.style_weight * style


def transfer(bb: Backbone, content: torch.Tensor, style: torch.Tensor,
             cfg: StyleConfig) -> tuple[torch.Tensor, dict[str, Any]]:
    """The stylised image (``1 x 3 x H x W`` in [0, 1]) and its losses at the start and the end."""
    loss_fn = StyleLoss(bb, content, style, cfg)
    if cfg.init == "content":
        img = content.clone()
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        img = torch.rand(content.shape, generator=g).to(content.device)
    img.requires_grad_(True)
    opt = torch.optim.LBFGS([img], max_iter=cfg.steps, max_eval=cfg.steps, tolerance_grad=0.0,
                            tolerance_change=0.0, line_search_fn="strong_wolfe")
    evaluations = [0]

    def closure():
        with torch.no_grad():
            img.clamp_(0, 1)  # the tutorial's way of keeping pixels valid
        opt.zero_grad()
        c, s = loss_fn(img)
        (c + s).backward()
        evaluations[0] += 1
        return c + s

    start = _losses(loss_fn, img)
    opt.step(closure)
    with torch.no_grad():
        img.clamp_(0, 1)
    end = _losses(loss_fn, img)
    if not math.isfinite(end["total"]):
        raise click.ClickException(f"{bb.path}: style transfer diverged (loss {end['total']}); lower "
                                   f"--style-weight or --steps")
    return img.detach(), {"start": start, "end": end, "evaluations": evaluations[0]}


def _losses(loss_fn: StyleLoss, img: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        c, s = loss_fn(img)
    return {"content": float(c), "style": float(s), "total": float(c + s)}


def resolve_layers(bb: Backbone, cfg: StyleConfig, checkpoint_option: str) -> StyleConfig:
    """``cfg`` with the style layers filled in (all of the encoder's) and every layer checked."""
    try:
        content = bb.check_layers(list(cfg.content_layers), "--content-layers")
        style = bb.check_layers(list(cfg.style_layers), "--style-layers")
    except click.ClickException as e:
        raise click.ClickException(f"{e.message} ({checkpoint_option})") from None
    return replace(cfg, content_layers=tuple(content), style_layers=tuple(style))


def stylise(checkpoints: list[str], content_path: str, style_path: str, out: str,
            cfg: StyleConfig) -> dict[str, Any]:
    """Style transfer with each checkpoint's encoder; the figure goes to ``out``, the record beside it."""
    device = resolve_device(cfg.device)
    content = read_image(content_path, "--content", cfg.size).to(device)
    style = read_image(style_path, "--style", cfg.size).to(device)
    # every checkpoint and its layers are checked before the first optimisation starts
    encoders = [(bb, resolve_layers(bb, cfg, option)) for bb, option in
                zip((load_backbone(p, device) for p in checkpoints), ["--checkpoint", "--compare"])]
    runs, panels = [], [("content", to_numpy(content)), ("style", to_numpy(style))]
    for bb, run_cfg in encoders:
        img, losses = transfer(bb, content, style, run_cfg)
        bb.assert_unchanged()
        runs.append({"checkpoint": describe_backbone(bb), "content_layers": list(run_cfg.content_layers),
                     "style_layers": list(run_cfg.style_layers), "losses": losses})
        panels.append((f"{bb.method}: {os.path.basename(os.path.dirname(bb.path)) or bb.path}", to_numpy(img)))
    panel_figure(panels, out)
    record = {"figure": "style transfer (paper Fig. 3)", "config": cfg.to_dict(), "out": os.path.abspath(out),
              "content": describe_file(content_path), "style": describe_file(style_path),
              "optimizer": "L-BFGS (torch.optim.LBFGS, lr 1, strong-Wolfe line search, --steps loss "
                           "evaluations), pixels clamped to [0, 1] before each evaluation",
              "runs": runs}
    record["json"] = write_config(out, record)
    return record


def _layers(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


D = StyleConfig()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", required=True, help="Checkpoint file or run folder whose encoder is used.")
@click.option("--content", "content", required=True, help="Content image.")
@click.option("--style", "style", required=True, help="Style image.")
@click.option("--out", required=True, help="Figure (PNG); the configuration is written beside it as .json.")
@click.option("--compare", default=None, help="A second checkpoint, drawn beside the first (as Fig. 3).")
@click.option("--steps", type=click.IntRange(1, 100_000), default=D.steps, show_default=True,
              help="L-BFGS loss evaluations.")
@click.option("--size", type=click.IntRange(16, 4096), default=D.size, show_default=True,
              help="Shorter side the content and style images are resized to.")
@click.option("--content-layers", default=",".join(D.content_layers), show_default=True)
@click.option("--style-layers", default="", help="Comma-separated; default: every conv layer of the encoder.")
@click.option("--features", type=click.Choice(["conv", "relu"]), default=D.features, show_default=True,
              help="Losses on each conv's output before its ReLU (the tutorial's) or after it.")
@click.option("--loss-scale", type=click.Choice(["relative", "tutorial"]), default=D.loss_scale, show_default=True,
              help="relative: each layer's loss divided by its target's mean square; tutorial: unscaled "
                   "(then the tutorial's --style-weight 1e6).")
@click.option("--content-weight", type=click.FloatRange(0, None), default=D.content_weight, show_default=True)
@click.option("--style-weight", type=click.FloatRange(0, None), default=D.style_weight, show_default=True)
@click.option("--init", type=click.Choice(["content", "noise"]), default=D.init, show_default=True)
@click.option("--seed", type=int, default=D.seed, show_default=True, help="For --init noise.")
@click.option("--device", default=D.device, show_default=True, help="auto, cpu, cuda or cuda:N.")
def cli(checkpoint, content, style, out, compare, steps, size, content_layers, style_layers, features,
        loss_scale, content_weight, style_weight, init, seed, device) -> None:
    """Stylise --content with --style on the encoder of --checkpoint (Gatys et al.; the paper's Fig. 3)."""
    cfg = StyleConfig(steps=steps, size=size, content_layers=_layers(content_layers),
                      style_layers=_layers(style_layers), features=features, loss_scale=loss_scale,
                      content_weight=content_weight, style_weight=style_weight, init=init, seed=seed,
                      device=device)
    if not cfg.content_layers:
        raise click.ClickException("--content-layers: give at least one layer, e.g. conv4")
    record = stylise([checkpoint] + ([compare] if compare else []), content, style, out, cfg)
    for run in record["runs"]:
        click.echo(f"{run['checkpoint']['method']}: loss {run['losses']['start']['total']:.4g} -> "
                   f"{run['losses']['end']['total']:.4g}", err=True)
    click.echo(f"wrote {out} and {record['json']}", err=True)


if __name__ == "__main__":
    cli()
