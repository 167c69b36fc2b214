"""`python -m probe.top1`: top-1 of a trained classifier checkpoint on a labelled split (the paper's Table 4).

``python -m probe.top1 --checkpoint RUN --data ROOT --out top1.json`` rebuilds the network a
``train.supervised`` run saved (encoder + classifier, from the checkpoint's ``state.model``), and scores
it with the trainer's own evaluation (``train.classifier.score``: eval mode, centre crops) on every image
of ``ROOT/val`` or ``ROOT/test``. The trainer itself evaluates only after complete epochs; a run stopped
by ``--max-steps`` or ``--time-budget`` mid-epoch is measured here, as it was saved.

``--frozen-from SRC --frozen conv1,conv2`` also proves that those blocks (weights and BatchNorm
statistics) are bit-identical to SRC's: a retraining that moved a frozen block is an error, not a row.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import types
from dataclasses import asdict, dataclass

import click
import torch

from augment.files import describe_os_error, file_digest, write_text_atomic
from probe.backbone import state_hash, strip_prefixes
from train.checkpoint import CHECKPOINT, REQUIRED, load_checkpoint
from train.classifier import DEFAULT_INPUT, build_classifier, check_label_classifier, score
from train.loader.folder import DATASETS, make_folder_loader, open_splits, transforms_for
from train.models import EncoderSpec
from train.run import Dist, git_revision, resolve_device
from train.supervised import Supervised

FORMAT = "single-image-ssl/top1"


@dataclass(frozen=True)
class Top1Config:
    """Options of one evaluation (recorded in its JSON)."""

    checkpoint: str = ""
    data: str = ""
    out: str = ""
    dataset: str = "imagefolder"
    batch_size: int = 256
    workers: int = 1
    device: str = "cpu"
    frozen_from: str = ""
    frozen: tuple[str, ...] = ("conv1", "conv2")


def block_digests(encoder: dict[str, torch.Tensor], blocks: tuple[str, ...], path: str) -> dict[str, str]:
    """Content hash of each named block's tensors (parameters and BatchNorm buffers) of an encoder state."""
    state = strip_prefixes(encoder)
    out = {}
    for block in blocks:
        part = {k: v for k, v in state.items() if k.startswith(f"blocks.{block}.")}
        if not part:
            raise click.ClickException(f"--frozen {block}: the encoder of {path} has no such block")
        out[block] = state_hash({}, part)
    return out


def check_frozen(ck: dict, cfg: Top1Config) -> dict:
    """The frozen blocks' digests, after checking they equal those of ``--frozen-from``."""
    if not cfg.frozen_from:
        return {}
    src = block_digests(load_checkpoint(cfg.frozen_from)["encoder"], cfg.frozen, cfg.frozen_from)
    got = block_digests(ck["encoder"], cfg.frozen, cfg.checkpoint)
    moved = [b for b in cfg.frozen if src[b] != got[b]]
    if moved:
        raise click.ClickException(f"{cfg.checkpoint}: {','.join(moved)} differ from {cfg.frozen_from}'s although "
                                   f"they were to stay frozen; this run's top-1 would not measure them, retrain it")
    return {"from": os.path.abspath(cfg.frozen_from), "blocks": list(cfg.frozen), "digests": got, "unchanged": True}


def load_classifier(ck: dict, path: str, num_classes: int, input_size: int) -> torch.nn.Module:
    """The network a supervised run trained, from its checkpoint's model state."""
    check_label_classifier(ck, path)
    model_state = (ck.get("state") or {}).get("model")
    if model_state is None:
        raise click.ClickException(f"{path}: holds no classifier (method {ck.get('method', '?')!r}); give the "
                                   f"checkpoint of a train.supervised run")
    model = build_classifier(EncoderSpec.from_dict(ck["encoder_spec"]), num_classes, input_size)
    try:
        model.load_state_dict(strip_prefixes(model_state))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise click.ClickException(f"{path}: its classifier does not fit {num_classes} classes of --data "
                                   f"({first[:200]})") from None
    return model


def run_top1(cfg: Top1Config) -> dict:
    """Evaluate the checkpoint on the data's evaluation split; writes and returns the record."""
    path = os.path.join(cfg.checkpoint, CHECKPOINT) if os.path.isdir(cfg.checkpoint) else cfg.checkpoint
    ck = load_checkpoint(path, require=REQUIRED)
    frozen = check_frozen(ck, cfg)
    run_cfg = ck.get("config") or {}
    arch = ck["encoder_spec"]["arch"]
    size = run_cfg.get("size") or DEFAULT_INPUT[arch]
    splits = open_splits(cfg.data, cfg.dataset, *transforms_for(arch, size))
    if splits.eval is None:
        raise click.ClickException(f"--data {cfg.data}: no val/ or test/ split to evaluate on")
    device = resolve_device(cfg.device)
    model = load_classifier(ck, path, len(splits.classes), size).to(device)
    loader = make_folder_loader(splits.eval, batch_size=cfg.batch_size, workers=cfg.workers, seed=0, train=False)
    # score() reads only these three of a training Run
    run = types.SimpleNamespace(autocast=contextlib.nullcontext, dist=Dist(), device=device)
    t0 = time.time()
    stats = score(run, model, loader.epoch(0), lambda b: Supervised.to_xy(b, run), acc_key="top1")
    record = {"format": FORMAT, "version": 1, "top1": round(100 * stats["top1"], 2), "loss": stats["loss"],
              "split": splits.eval_name, "count": len(splits.eval), "classes": len(splits.classes),
              "frozen": frozen, "config": asdict(cfg), "seconds": round(time.time() - t0, 2),
              "checkpoint": {"path": os.path.abspath(path), "sha256": file_digest(path),
                             "method": ck.get("method"), "step": ck.get("step"), "epoch": ck.get("epoch"),
                             "train_seconds": ck.get("train_seconds"), "config": run_cfg,
                             "encoder_spec": ck["encoder_spec"], "git": ck.get("git")},
              "git": git_revision(), "device": str(device), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        write_text_atomic(cfg.out, text)
    except OSError as e:
        raise click.ClickException(f"--out: {describe_os_error(e, cfg.out, len(text.encode()))}") from None
    return record


D = Top1Config()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", required=True, help="checkpoint.pt of a train.supervised run, or its folder.")
@click.option("--data", required=True, help="ImageFolder root with val/ or test/ (or CIFAR files' folder).")
@click.option("--out", required=True, help="JSON record to write.")
@click.option("--dataset", type=click.Choice(DATASETS), default=D.dataset, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=D.batch_size, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=D.workers, show_default=True)
@click.option("--device", default=D.device, show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--frozen-from", default=D.frozen_from, help="Checkpoint whose --frozen blocks must be unchanged.")
@click.option("--frozen", default=",".join(D.frozen), show_default=True, help="Blocks checked with --frozen-from.")
def cli(checkpoint, data, out, dataset, batch_size, workers, device, frozen_from, frozen) -> None:
    """Top-1 (%) of a supervised run's network on the evaluation split of --data."""
    blocks = tuple(b.strip() for b in frozen.split(",") if b.strip())
    rec = run_top1(Top1Config(checkpoint=checkpoint, data=data, out=out, dataset=dataset, batch_size=batch_size,
                              workers=workers, device=device, frozen_from=frozen_from, frozen=blocks))
    click.echo(f"top-1 {rec['top1']:.2f} % on {rec['count']} {rec['split']} images"
               + (f"; {','.join(blocks)} unchanged" if rec["frozen"] else "") + f"; wrote {out}", err=True)


if __name__ == "__main__":
    cli()
