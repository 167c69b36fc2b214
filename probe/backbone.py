"""Checkpoint -> frozen, BatchNorm-folded encoder: the fixed feature extractor every probe reads.

The paper (§4.1) absorbs each BatchNorm into the convolution before it and keeps the network fixed.
Folding is exact in eval mode (BN is then an affine map per channel), so the folded encoder computes
the same activations as conv + BN with running statistics; it just cannot drift, because nothing is
left that a ``train()`` call could update (the failure lightly #1440 reports for frozen-BN probes).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import click
import torch
from torch import nn

from augment.files import file_digest
from train.checkpoint import CHECKPOINT, load_checkpoint
from train.models import Encoder, EncoderSpec
from train.run import autocast

# Prefixes wrappers put in front of parameter names: DDP (module.) and torch.compile (_orig_mod.).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP / torch.compile prefixes (repeatedly: a compiled DDP model nests them)."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def state_hash(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """Content hash of an encoder (spec + every tensor): the feature cache's key.

    Independent of optimiser state, time stamps and file layout, so re-saving the same weights hits
    the same cache entry.
    """
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv computing ``bn(conv(x))`` in eval mode: W' = W·γ/√(var+ε), b' = (b−μ)·γ/√(var+ε)+β."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    with torch.no_grad():
        scale = bn.running_var.double().add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        shift = (bias - bn.running_mean.double()) * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                           conv.padding, conv.dilation, conv.groups, bias=True,
                           padding_mode=conv.padding_mode)
        folded.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
        folded.bias.copy_(shift.to(conv.weight.dtype))
    return folded.to(conv.weight.device)


def fold_encoder(encoder: Encoder) -> int:
    """Fold every block's BatchNorm into its conv in place (BN -> Identity); returns how many were folded."""
    n = 0
    for block in encoder.blocks.values():
        # only conv-BN-act blocks (a scattering frontend or an identity block is left as it is)
        if isinstance(block, nn.Sequential) and len(block) > 1 and isinstance(block[1], nn.BatchNorm2d):
            block[0] = fold_bn(block[0], block[1])
            block[1] = nn.Identity()
            n += 1
    return n


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients, for every parameter."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def weights_digest(module: nn.Module) -> str:
    """Hash of the current parameters and buffers: taken before and after probing to prove nothing moved."""
    return state_hash({}, {k: v for k, v in module.state_dict().items()})


def activations(encoder: Encoder, x: torch.Tensor, layers: list[str],
                pre_activation: bool = False) -> dict[str, torch.Tensor]:
    """``layers``' activations, with gradients to ``x`` where autograd is on (style transfer, unit
    visualisation); ``pre_activation`` gives each block's input to its nonlinearity instead."""
    out = {}
    last = max(layers, key=encoder.layer_names.index)
    if encoder.sobel is not None:
        x = encoder.sobel(x)
    for name, block in encoder.blocks.items():
        if pre_activation and name in layers:
            out[name] = block[:-1](x)
            x = block[-1](out[name].clone())  # the nonlinearity is in place
        else:
            x = block(x)
            if name in layers:
                out[name] = x
        if name == last:
            break
        if name in encoder.pools:
            x = encoder.pools[name](x)
    return out


@dataclass
class Backbone:
    """A frozen, folded encoder and where it came from."""

    encoder: Encoder
    path: str
    method: str
    config: dict[str, Any]
    spec: dict[str, Any]
    encoder_hash: str
    checkpoint_sha256: str
    folded: int
    epoch: Any = None
    git: str = "unknown"
    forward_calls: int = 0
    digest: str = field(default="", repr=False)
    amp_dtype: Any = None         # bf16: the feature pass runs under autocast (--amp); features stay float32

    @property
    def layer_names(self) -> list[str]:
        return self.encoder.layer_names

    def check_layers(self, layers: list[str], option: str = "--layers") -> list[str]:
        """``layers`` (default: all) after checking the encoder has each one; a clear error naming ``option``."""
        if not layers:
            return self.layer_names
        missing = [n for n in layers if n not in self.layer_names]
        if missing:
            raise click.ClickException(f"{option} {missing[0]}: the {self.spec.get('arch')} encoder of "
                                       f"{self.path} has no such layer; it has {', '.join(self.layer_names)}")
        return sorted(layers, key=self.layer_names.index)

    @torch.no_grad()
    def features(self, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        """Activations after each block's nonlinearity, stopping after the deepest one asked for.

        Unlike ``Encoder.features`` it never runs the pool after the last layer, so small inputs
        (AlexNet on 32x32 CIFAR: conv5 is 1x1) still work.
        """
        self.forward_calls += 1
        with autocast(x.device, self.amp_dtype):
            return {k: v.float() for k, v in activations(self.encoder, x, layers).items()}

    def assert_unchanged(self) -> None:
        """Fail loudly if probing moved a weight or a BN statistic, or left the backbone in train mode."""
        if any(m.training for m in self.encoder.modules()):
            raise RuntimeError(f"{self.path}: the backbone left eval mode during probing")
        if any(p.requires_grad for p in self.encoder.parameters()):
            raise RuntimeError(f"{self.path}: a backbone parameter requires grad during probing")
        if weights_digest(self.encoder) != self.digest:
            raise RuntimeError(f"{self.path}: backbone weights changed during probing")


def load_encoder_state(ck: dict[str, Any], path: str) -> tuple[Encoder, dict[str, torch.Tensor]]:
    """Rebuild the checkpoint's encoder and load its weights; missing or unknown keys are named."""
    if "encoder_spec" not in ck or "encoder" not in ck:
        raise click.ClickException(f"{path}: checkpoint has no encoder_spec/encoder entries; it was not "
                                   f"written by a trainer of this project")
    try:
        encoder = Encoder(EncoderSpec.from_dict(ck["encoder_spec"]))
    except (TypeError, ValueError) as e:
        raise click.ClickException(f"{path}: bad encoder_spec {ck['encoder_spec']!r} ({e})") from None
    state = strip_prefixes(ck["encoder"])
    want = encoder.state_dict()
    # num_batches_tracked does not change any activation: tolerate its absence (older exports).
    missing = [k for k in want if k not in state and not k.endswith("num_batches_tracked")]
    unknown = [k for k in state if k not in want]
    if missing or unknown:
        parts = ([f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")] if missing else []) \
            + ([f"unknown {', '.join(unknown[:5])}" + (" ..." if len(unknown) > 5 else "")] if unknown else [])
        raise click.ClickException(f"{path}: encoder weights do not match its encoder_spec "
                                   f"({'; '.join(parts)})")
    bad = [k for k in state if tuple(state[k].shape) != tuple(want[k].shape)]
    if bad:
        raise click.ClickException(f"{path}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, the spec "
                                   f"needs {tuple(want[bad[0]].shape)}")
    encoder.load_state_dict(state, strict=False)
    return encoder, state


def load_backbone(path: str, device: torch.device | str = "cpu", fold: bool = True) -> Backbone:
    """Checkpoint file or run folder -> frozen encoder with every BatchNorm folded into its conv."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    ck = load_checkpoint(path, require=("encoder_spec", "encoder"))
    encoder, state = load_encoder_state(ck, path)
    spec = dict(ck["encoder_spec"])
    n = fold_encoder(encoder) if fold else 0
    freeze(encoder).to(device)
    bb = Backbone(encoder=encoder, path=os.path.abspath(path), method=str(ck.get("method", "unknown")),
                  config=dict(ck.get("config") or {}), spec=spec, encoder_hash=state_hash(spec, state),
                  checkpoint_sha256=file_digest(path), folded=n, epoch=ck.get("epoch"),
                  git=str(ck.get("git", "unknown")))
    bb.digest = weights_digest(encoder)
    return bb
