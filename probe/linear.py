"""`python -m probe.linear`: linear probes on every conv layer of a frozen checkpoint (paper §4.1).

Two protocols (``--protocol``; ``auto`` picks by dataset and image size):

* ``cifar`` (``--dataset cifar10|cifar100``, or an ImageFolder of 32x32 images such as the CIFAR-10 JPEG
  tree): inputs as stored, no augmentation, the whole activation flattened; features are computed once
  into a feature cache (``probe.cache``) and the probes train on them.
* ``imagenet`` (an ImageFolder of any other size, train/ + val/): shorter edge 256, random 224 crop +
  flip each epoch, adaptive max-pool to ~9600 dims, ten-crop evaluation; all layers' probes share one
  backbone pass.

``--variant paper`` (default) follows the paper's text; ``--variant released`` sets every option in which
the released probe code (``yukimasano/linear-probes``) differs (``ProbeVariant``); an option given on its
own wins over the variant's value, and ``probe.json`` records the resolved values.

Writes ``OUT/probe.json`` (top-1 per layer, final and best, and everything needed to trust it) and
``OUT/log.jsonl`` (a header line, then one line per layer and epoch). See docs/probes.md.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import click
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from augment.files import describe_os_error, write_text_atomic
from probe import cache as fcache
from probe.backbone import Backbone, load_backbone
from probe.data import (DATASETS, TRAIN_CROPS, BadImages, FolderImages, eval_split_dir, first_image_size, folder_key,
                        imagenet_transforms, list_folder, load_cifar, subset)
from probe.heads import (LINEAR_INITS, POOLINGS, PROBE_BNS, SCHEDULES, TEN_CROP_AVERAGES, LayerProbe, build_probes,
                         lr_at, milestones, ten_crop_average)
from train.checkpoint import CHECKPOINT
from train.loader import prepare
from train.config import AMP_CHOICES, Finite, available_cpus
from train.run import LOCK_DIR, amp_dtype, git_revision, library_versions, resolve_device

RESULT = "probe.json"
LOG = "log.jsonl"
FORMAT = "single-image-ssl/probe"


@dataclass(frozen=True)
class ProbeVariant:
    """The options ``--variant`` sets: the paper's text, or the released probe code (docs/probes.md).

    The paper names neither a normalisation nor an init; ``feature`` BN and torch's init stand for it.
    """

    schedule: str = "paper"             # released: /10 at 10, 20, 30 (eval_linear_probes.py)
    pooling: str = "paper"              # imagenet protocol only; released: fixed MaxPool2d per layer
    ten_crop_average: str = "softmax"   # released: mean of logits
    probe_bn: str = "feature"           # released: BatchNorm2d(C, affine=False) on the pooled map
    linear_init: str = "default"        # released: xavier-uniform of the equivalent conv, bias 0
    train_crop: str = "fixed"           # released: RandomResizedCrop(224) (data.py)


VARIANTS = {"paper": ProbeVariant(),
            "released": ProbeVariant(schedule="released", pooling="released", ten_crop_average="logits",
                                     probe_bn="channel", linear_init="xavier", train_crop="resized")}
VARIANT_OPTIONS = tuple(f.name for f in fields(ProbeVariant))


@dataclass(frozen=True)
class ProbeConfig:
    """Every option of a probe run (recorded in probe.json).

    The options of ``ProbeVariant`` left at None take the value of ``variant``; ``pooling="auto"`` is
    resolved with the protocol (CIFAR probes never pool).
    """

    checkpoint: str = ""
    dataset: str = "cifar10"
    data_root: str = ""
    out: str = "runs/probe"
    variant: str = "paper"
    epochs: int = 36
    schedule: str | None = None       # paper: /5 at 5, 15, 25; released: /10 at 10, 20, 30
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5        # the paper gives none; the released probe code's value
    batch_size: int = 192             # the released probe code's value
    workers: int = min(2, available_cpus())
    device: str = "auto"
    seed: int = 0
    layers: tuple[str, ...] = ()      # empty: every conv block of the encoder
    pooling: str = "auto"             # auto: none for CIFAR, the variant's for imagefolder
    ten_crop_average: str | None = None
    probe_bn: str | None = None       # feature | channel | none
    linear_init: str | None = None    # default | xavier
    train_crop: str | None = None     # fixed | resized (imagenet protocol)
    skip_bad_images: bool = False     # leave undecodable images out (counted) instead of stopping
    cache: str = ""                   # empty: the user cache folder (probe.cache.default_cache_dir)
    cache_dtype: str = "float16"
    feature_batch_size: int = 256
    eval_every: int = 1
    limit_train: int = 0              # 0: all; otherwise a seeded subset (quick runs, never the paper's numbers)
    limit_eval: int = 0
    resize: int = 256
    crop: int = 224
    label: str = ""
    overwrite: bool = False
    threads: int = 0                  # torch CPU threads; 0: torch's default for backbone passes, 1 for cached probes
    jobs: int = 1                     # CIFAR: layers' probes trained in this many processes (CPU)
    protocol: str = "auto"            # auto: cifar for cifar10/100 and 32x32 folders, imagenet otherwise
    keep_cache: bool = True           # False: delete this run's cache files afterwards (disk: ~3.2 GB per
                                      # checkpoint for CIFAR-10 with the small encoder)
    amp: str = "cuda"                 # the backbone pass's bf16 autocast, as the trainers' --amp

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}: use one of {', '.join(VARIANTS)}")
        for name in VARIANT_OPTIONS:
            if name != "pooling" and getattr(self, name) is None:
                object.__setattr__(self, name, getattr(VARIANTS[self.variant], name))

    def to_dict(self) -> dict[str, Any]:
        return dict(sorted(asdict(self).items()))

    def variant_overrides(self) -> dict[str, Any]:
        """The resolved options that differ from their variant's values (given on their own)."""
        base = VARIANTS[self.variant]
        skip = {"pooling"} if self.protocol == "cifar" or self.pooling == "auto" else set()
        return {n: getattr(self, n) for n in VARIANT_OPTIONS if n not in skip and getattr(self, n) != getattr(base, n)}


# --------------------------------------------------------------------------- bookkeeping


class ProbeLog:
    """``OUT/log.jsonl``: a header line, then one JSON object per event."""

    def __init__(self, path: str, header: dict[str, Any] | None, t0: float | None = None):
        self.path, self.t0 = path, t0 or time.time()
        if header is not None:  # None: append to a log another process started (--jobs)
            self._write("w", json.dumps(header, default=str))

    def __call__(self, record: dict[str, Any]) -> None:
        record = {"elapsed_s": round(time.time() - self.t0, 3)} | record
        self._write("a", json.dumps(record, sort_keys=True, default=str))

    def _write(self, mode: str, line: str) -> None:
        try:
            with open(self.path, mode) as f:
                f.write(line + "\n")
        except OSError as e:
            raise click.ClickException(describe_os_error(e, self.path, len(line) + 1)) from None


def bar(it=None, **kw):
    from tqdm import tqdm

    return tqdm(it, dynamic_ncols=True, mininterval=1.0, file=sys.stderr, leave=False, **kw)


def write_result(obj: Any, path: str) -> None:
    """probe.json, atomically: a full disk leaves the previous file as it was and no temporary file."""
    text = json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n"
    try:
        write_text_atomic(path, text)
    except OSError as e:
        raise click.ClickException(describe_os_error(e, path, len(text.encode()))) from None


def make_out(out: str) -> None:
    """Create ``--out`` (one line when it cannot be: under a regular file, on a read-only or pseudo fs)."""
    try:
        os.makedirs(out, exist_ok=True)
    except FileNotFoundError as e:  # a pseudo filesystem such as /proc refuses new folders this way
        raise click.ClickException(f"--out {out}: cannot be created here ({e.strerror}); choose a folder on a "
                                   f"writable disk") from None
    except OSError as e:
        raise click.ClickException(f"--out: {describe_os_error(e, out)}") from None


def make_optimizer(params, cfg: ProbeConfig) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def set_lr(opt: torch.optim.Optimizer, cfg: ProbeConfig, epoch: int) -> float:
    lr = lr_at(epoch, cfg.schedule, cfg.epochs, cfg.lr)
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's minibatches of sample indices (seeded by (seed, epoch), the same for every layer).

    A trailing batch of one sample is dropped: BatchNorm cannot normalise it.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    batches = [np.sort(order[i:i + batch_size]) for i in range(0, n, batch_size)]
    return [b for b in batches if len(b) > 1]


def summarise(history: dict[str, list[tuple[int, float]]]) -> dict[str, dict[str, Any]]:
    """Per layer: final top-1, best top-1 and the (1-based) epoch of the best."""
    out = {}
    for name, points in history.items():
        best_epoch, best = max(points, key=lambda p: (p[1], -p[0]))
        out[name] = {"final": points[-1][1], "best": best, "best_epoch": best_epoch}
    return out


# --------------------------------------------------------------------------- CIFAR: cached features


@torch.no_grad()
def accuracy(probe: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device, chunk: int = 4096) -> float:
    """Top-1 (percent) of ``probe`` in eval mode on features ``x``."""
    probe.eval()
    correct = 0
    for i in range(0, len(x), chunk):
        logits = probe(torch.from_numpy(x[i:i + chunk]).to(device).float())
        correct += int((logits.argmax(1).cpu() == torch.from_numpy(np.asarray(y[i:i + chunk]))).sum())
    return 100.0 * correct / max(1, len(x))


def train_cached_layer(name: str, train: tuple, test: tuple, num_classes: int, cfg: ProbeConfig,
                       device: torch.device, log: ProbeLog, pbar=None,
                       shape: tuple[int, ...] | None = None) -> list[tuple[int, float]]:
    """Train one layer's probe on cached features; returns [(epoch, test top-1)] at each evaluation.

    ``shape`` is the activation's ``C x H x W`` (for the per-channel BN); None: each feature a channel.

    Probes of different layers share nothing, and every layer sees the same seeded batch order, so
    training them one after another equals training them together (and keeps one layer in memory).
    """
    (xtr, ytr), (xte, yte) = train, test
    # torch's index_select + float() on a float16 tensor is 3x faster than numpy fancy indexing + convert.
    xtr_t, ytr_t = torch.from_numpy(np.ascontiguousarray(xtr)), torch.from_numpy(np.asarray(ytr, dtype=np.int64))
    torch.manual_seed(cfg.seed)
    probe = LayerProbe(nn.Identity(), shape or (xtr.shape[1], 1, 1), num_classes, cfg.probe_bn,
                       cfg.linear_init).to(device)
    opt, lossf, history = make_optimizer(probe.parameters(), cfg), nn.CrossEntropyLoss(), []
    for epoch in range(cfg.epochs):
        lr, total, correct, seen = set_lr(opt, cfg, epoch), 0.0, 0, 0
        probe.train()
        for idx in batch_order(len(xtr), cfg.batch_size, cfg.seed, epoch):
            rows = torch.from_numpy(idx)
            x = xtr_t.index_select(0, rows).to(device).float()
            y = ytr_t.index_select(0, rows).to(device)
            logits = probe(x)
            loss = lossf(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
        if not np.isfinite(total):
            raise click.ClickException(f"{name}: probe loss is {total} at epoch {epoch + 1}; lower --lr")
        rec = {"layer": name, "epoch": epoch + 1, "lr": lr, "loss": total / seen, "train_top1": 100.0 * correct / seen}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            rec["top1"] = accuracy(probe, xte, yte, device)
            history.append((epoch + 1, rec["top1"]))
        log(rec)
        if pbar is not None:
            pbar.set_postfix(layer=name, top1=rec.get("top1", "-"))
            pbar.update(1)
    return history


def train_layer_from_cache(path: str, splits: tuple[str, str], name: str, num_classes: int, cfg: ProbeConfig,
                           device: torch.device, log: ProbeLog, pbar=None) -> tuple[list, int]:
    """Load one layer's cached features (only that layer is in memory) and train its probe."""
    xtr, ytr, chw = fcache.load_layer(path, splits[0], name)
    xte, yte, _ = fcache.load_layer(path, splits[1], name)
    history = train_cached_layer(name, (xtr, ytr), (xte, yte), num_classes, cfg, device, log, pbar, chw)
    return history, int(xtr.shape[1])


def _layer_job(path: str, splits: tuple[str, str], name: str, num_classes: int, cfg: ProbeConfig,
               log_path: str, t0: float, threads: int) -> tuple[list, int]:
    torch.set_num_threads(threads)
    return train_layer_from_cache(path, splits, name, num_classes, cfg, torch.device("cpu"),
                                  ProbeLog(log_path, None, t0))


def train_layers_parallel(path: str, splits: tuple[str, str], layers: list[str], num_classes: int,
                          cfg: ProbeConfig, log: ProbeLog, pbar, jobs: int) -> dict[str, tuple[list, int]]:
    """Layers' probes in ``jobs`` processes (spawned: forking after torch's thread pool started can hang).

    Each layer's result depends only on (seed, layer), so the answer equals the sequential one.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = cfg.threads or 1
    out = {}
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_layer_job, path, splits, n, num_classes, cfg, log.path, log.t0, threads): n
                   for n in layers}
        for fut in as_completed(futures):
            out[futures[fut]] = fut.result()
            pbar.set_postfix(layer=futures[fut], top1=out[futures[fut]][0][-1][1])
            pbar.update(cfg.epochs)
    return out


def report_skipped(skipped: dict[str, dict[str, str]], log: ProbeLog) -> None:
    """One line (and a log event) when unreadable images were left out (``--skip-bad-images``)."""
    count = sum(len(v) for v in skipped.values())
    if count:
        per = ", ".join(f"{len(v)} in {k}" for k, v in skipped.items() if v)
        click.echo(f"skipped {count} unreadable image file(s) ({per}); probe.json lists them", err=True)
        log({"event": "skipped_images", "count": count, "files": skipped})


def limit_split(split, limit: int, seed: int) -> None:
    """Keep a seeded subset of ``limit`` samples (0: all); the split's key changes with it."""
    if not limit or limit >= len(split):
        return
    keep = np.asarray(subset(list(range(len(split))), limit, seed))
    split.labels = split.labels[keep]
    split.images = split.images[keep] if split.images is not None else None
    split.files = [split.files[i] for i in keep] if split.files is not None else None
    split.key = f"{split.key}|subset:{limit}:{seed}"


def run_cifar(cfg: ProbeConfig, bb: Backbone, layers: list[str], device: torch.device,
              log: ProbeLog) -> tuple[dict, dict]:
    """Features once (cached), then every layer's probe; returns (history, resolved facts)."""
    classes, tr, te = load_cifar(cfg.dataset, cfg.data_root)
    limit_split(tr, cfg.limit_train, cfg.seed)
    limit_split(te, cfg.limit_eval, cfg.seed)
    # bf16 features are other numbers: their own cache entry
    path = fcache.entry_dir(cfg.cache, bb.encoder_hash, cfg.dataset, [tr, te],
                            cfg.cache_dtype + ("-bf16" if bb.amp_dtype else ""))
    stats = fcache.ensure(bb, [tr, te], layers, path, skip_bad=cfg.skip_bad_images, batch_size=cfg.feature_batch_size,
                          workers=cfg.workers, device=device, dtype=cfg.cache_dtype,
                          progress=lambda it, **kw: bar(it, **kw))
    log({"event": "features", "cache": path, "stats": stats})
    skipped = {s: stats[s]["skipped_images"] for s in stats}
    report_skipped(skipped, log)
    jobs = min(cfg.jobs, len(layers)) if device.type == "cpu" else 1
    threads_before = torch.get_num_threads()
    if device.type == "cpu" and not cfg.threads:
        # Probe steps are many small ops: intra-op threads mostly wait on each other (measured: 1 thread
        # 4-10x faster than 2 on a busy 2-core machine). Backbone passes above keep torch's default.
        torch.set_num_threads(1)
    try:
        with bar(total=len(layers) * cfg.epochs, desc="probes") as pbar:
            if jobs > 1:
                out = train_layers_parallel(path, (tr.name, te.name), layers, len(classes), cfg, log, pbar, jobs)
            else:
                out = {n: train_layer_from_cache(path, (tr.name, te.name), n, len(classes), cfg, device, log,
                                                 pbar) for n in layers}
    finally:
        torch.set_num_threads(threads_before)
    history, dims = {n: out[n][0] for n in layers}, {n: out[n][1] for n in layers}
    if not cfg.keep_cache:
        fcache.remove_entry_files(path, [tr.name, te.name], layers)
        log({"event": "cache_deleted", "cache": path})
    resolved = {"num_classes": len(classes), "train_count": len(tr) - len(skipped[tr.name]),
                "eval_count": len(te) - len(skipped[te.name]), "eval_split": te.name, "skipped_images": skipped,
                "image_size": list(tr.size or ()), "dims": dims, "data_keys": {tr.name: tr.key, te.name: te.key},
                "cache": {"folder": path, "dtype": cfg.cache_dtype, "stats": stats, "kept": cfg.keep_cache}}
    return history, resolved


# --------------------------------------------------------------------------- ImageNet-style: ten crops


def activation_shapes(bb: Backbone, layers: list[str], size: int, device: torch.device) -> dict[str, tuple]:
    feats = bb.features(torch.zeros(1, bb.encoder.spec.in_channels, size, size, device=device), layers)
    bb.forward_calls -= 1  # a shape probe, not a data pass
    return {n: tuple(f.shape[1:]) for n, f in feats.items()}


def readable(batch, loader: DataLoader, bad: BadImages) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a ``FolderImages`` batch without its unreadable items (``bad`` decides)."""
    images, labels, index, whys = batch
    keep = bad.keep([loader.dataset.samples[i][0] for i in index.tolist()], list(whys))
    return (images, labels) if bool(keep.all()) else (images[keep], labels[keep])


def train_epoch(bb: Backbone, probes: nn.ModuleDict, loader: DataLoader, opt, device: torch.device,
                desc: str, bad: BadImages) -> dict[str, float]:
    """One epoch of every layer's probe from shared backbone passes (loss = sum over layers)."""
    probes.train()
    lossf, total, seen = nn.CrossEntropyLoss(), 0.0, 0
    for batch in bar(loader, total=len(loader), desc=desc):
        images, labels = readable(batch, loader, bad)
        if len(labels) < 2:  # BatchNorm cannot normalise one sample
            continue
        feats = bb.features(prepare(images, device), list(probes.keys()))
        y = labels.to(device)
        loss = sum(lossf(probes[n](feats[n]), y) for n in probes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(y)
        seen += len(y)
    return {"loss_sum_layers": total / max(1, seen)}


@torch.no_grad()
def evaluate_ten_crop(bb: Backbone, probes: nn.ModuleDict, loader: DataLoader, device: torch.device,
                      how: str, bad: BadImages) -> dict[str, float]:
    """Top-1 per layer with the scores of each image's crops averaged (``how``: softmax or logits)."""
    probes.eval()
    correct, seen = {n: 0 for n in probes}, 0
    for batch in bar(loader, total=len(loader), desc="ten-crop eval"):
        crops, labels = readable(batch, loader, bad)
        if not len(labels):
            continue
        n, k = crops.shape[:2]
        feats = bb.features(prepare(crops.flatten(0, 1), device), list(probes.keys()))
        for name, probe in probes.items():
            scores = ten_crop_average(probe(feats[name]).view(n, k, -1), how)
            correct[name] += int((scores.argmax(1).cpu() == labels).sum())
        seen += n
    return {name: 100.0 * c / max(1, seen) for name, c in correct.items()}


def imagenet_loaders(cfg: ProbeConfig, epoch: int, train_set, eval_set) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    drop = len(train_set) % cfg.batch_size == 1  # a batch of one cannot be batch-normalised
    train = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=g, num_workers=cfg.workers,
                       drop_last=drop)
    ev = DataLoader(eval_set, batch_size=max(1, cfg.batch_size // 10), num_workers=cfg.workers)
    return train, ev


def run_imagenet(cfg: ProbeConfig, bb: Backbone, layers: list[str], device: torch.device,
                 log: ProbeLog) -> tuple[dict, dict]:
    """Augmented passes every epoch (no cache), ten-crop evaluation; returns (history, resolved facts)."""
    eval_name = eval_split_dir(cfg.data_root, ("val", "test"))
    classes, train_samples = list_folder(os.path.join(cfg.data_root, "train"))
    _, eval_samples = list_folder(os.path.join(cfg.data_root, eval_name), classes)
    train_samples = subset(train_samples, cfg.limit_train, cfg.seed)
    eval_samples = subset(eval_samples, cfg.limit_eval, cfg.seed)
    train_tf, ten_tf = imagenet_transforms(cfg.resize, cfg.crop, cfg.train_crop)
    in_ch = bb.encoder.spec.in_channels
    train_set = FolderImages(train_samples, train_tf, (in_ch, cfg.crop, cfg.crop))
    eval_set = FolderImages(eval_samples, ten_tf, (10, in_ch, cfg.crop, cfg.crop))
    shapes = activation_shapes(bb, layers, cfg.crop, device)
    torch.manual_seed(cfg.seed)
    try:
        probes = build_probes(shapes, cfg.pooling, bb.spec.get("arch", "alexnet"), len(classes),
                              cfg.probe_bn, cfg.linear_init).to(device)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    opt, history = make_optimizer(probes.parameters(), cfg), {n: [] for n in layers}
    bad = {"train": BadImages(cfg.skip_bad_images), eval_name: BadImages(cfg.skip_bad_images)}
    for epoch in range(cfg.epochs):
        lr = set_lr(opt, cfg, epoch)
        train_loader, eval_loader = imagenet_loaders(cfg, epoch, train_set, eval_set)
        rec = {"epoch": epoch + 1, "lr": lr} | train_epoch(bb, probes, train_loader, opt, device,
                                                            f"epoch {epoch + 1}/{cfg.epochs}", bad["train"])
        if not np.isfinite(rec["loss_sum_layers"]):
            raise click.ClickException(f"probe loss is {rec['loss_sum_layers']} at epoch {epoch + 1}; lower --lr")
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            rec["top1"] = evaluate_ten_crop(bb, probes, eval_loader, device, cfg.ten_crop_average, bad[eval_name])
            for name, acc in rec["top1"].items():
                history[name].append((epoch + 1, acc))
        log(rec)
    skipped = {k: dict(sorted(b.found.items())) for k, b in bad.items()}
    report_skipped(skipped, log)
    resolved = {"num_classes": len(classes), "train_count": len(train_samples) - len(skipped["train"]),
                "eval_count": len(eval_samples) - len(skipped[eval_name]), "skipped_images": skipped,
                "eval_split": eval_name, "activation_shapes": {n: list(s) for n, s in shapes.items()},
                "data_keys": {"train": folder_key(train_samples, cfg.data_root),
                              eval_name: folder_key(eval_samples, cfg.data_root)},
                "dims": {n: p.dim for n, p in probes.items()}}
    return history, resolved


# --------------------------------------------------------------------------- the one entry point


def check_config(cfg: ProbeConfig) -> ProbeConfig:
    """Validate option combinations; resolve ``pooling=auto`` (by protocol and variant) and the cache folder."""
    if cfg.dataset not in DATASETS:
        raise click.ClickException(f"--dataset {cfg.dataset}: use one of {', '.join(DATASETS)}")
    if not cfg.data_root:
        raise click.ClickException("--data-root is required (a CIFAR pickle folder or an ImageFolder tree)")
    for name, choices in (("schedule", SCHEDULES), ("ten_crop_average", TEN_CROP_AVERAGES),
                          ("probe_bn", PROBE_BNS), ("linear_init", LINEAR_INITS), ("train_crop", TRAIN_CROPS)):
        if getattr(cfg, name) not in choices:
            raise click.ClickException(f"--{name.replace('_', '-')} {getattr(cfg, name)}: use one of "
                                       f"{', '.join(choices)}")
    protocol = resolve_protocol(cfg)
    pooling = cfg.pooling if cfg.pooling != "auto" else (VARIANTS[cfg.variant].pooling if protocol == "imagenet"
                                                         else "none")
    if pooling not in POOLINGS:
        raise click.ClickException(f"--pooling {cfg.pooling}: use auto or one of {', '.join(POOLINGS)}")
    if protocol == "cifar" and pooling != "none":
        raise click.ClickException(f"--pooling {pooling}: CIFAR probes use the full activation (paper §4.1); "
                                   f"use --pooling none or auto")
    if protocol == "imagenet" and cfg.crop > cfg.resize:
        raise click.ClickException(f"--crop {cfg.crop} is larger than --resize {cfg.resize}: the ten evaluation "
                                   f"crops are cut from the resized image; give a --crop of at most --resize")
    if any(os.path.exists(os.path.join(cfg.out, n)) for n in (CHECKPOINT, LOCK_DIR)):
        raise click.ClickException(f"--out {cfg.out} holds a training run ({CHECKPOINT}); a probe there would "
                                   f"replace its {LOG}; choose another --out, e.g. probes/"
                                   f"{os.path.basename(os.path.normpath(cfg.out))}")
    if os.path.isfile(os.path.join(cfg.out, RESULT)) and not cfg.overwrite:
        raise click.ClickException(f"{cfg.out} already holds {RESULT}; choose another --out or pass --overwrite")
    return replace(cfg, pooling=pooling, protocol=protocol, cache=cfg.cache or fcache.default_cache_dir())


def resolve_protocol(cfg: ProbeConfig) -> str:
    """``cifar`` for CIFAR pickles and ImageFolders of 32x32 images (§4.1 keeps CIFAR's size), else ``imagenet``."""
    if cfg.protocol not in ("auto", "cifar", "imagenet"):
        raise click.ClickException(f"--protocol {cfg.protocol}: use auto, cifar or imagenet")
    if cfg.dataset != "imagefolder":
        if cfg.protocol == "imagenet":
            raise click.ClickException(f"--protocol imagenet needs --dataset imagefolder, not {cfg.dataset}")
        return "cifar"
    if cfg.protocol != "auto":
        return cfg.protocol
    size = first_image_size(os.path.join(cfg.data_root, "train"))
    return "cifar" if size == (32, 32) else "imagenet"


def checkpoint_facts(bb: Backbone) -> dict[str, Any]:
    return {"path": bb.path, "sha256": bb.checkpoint_sha256, "encoder_hash": bb.encoder_hash,
            "method": bb.method, "config": bb.config, "encoder_spec": bb.spec, "epoch": bb.epoch,
            "git": bb.git, "bn_folded": bb.folded}


def run_probe(cfg: ProbeConfig) -> dict[str, Any]:
    """Probe every requested layer of ``cfg.checkpoint``; writes and returns the probe.json record."""
    cfg = check_config(cfg)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    make_out(cfg.out)  # before anything slow: an --out that cannot exist fails at once
    bb = load_backbone(cfg.checkpoint, device)
    bb.amp_dtype, why_fp32 = amp_dtype(device, cfg.amp)
    if why_fp32:
        click.echo(why_fp32, err=True)
    layers = bb.check_layers(list(cfg.layers))
    t0 = time.time()
    log = ProbeLog(os.path.join(cfg.out, LOG), {"git": git_revision(), "config": cfg.to_dict(), "argv": sys.argv,
                                                "checkpoint": checkpoint_facts(bb), "versions": library_versions()})
    runner = run_imagenet if cfg.protocol == "imagenet" else run_cifar
    history, resolved = runner(cfg, bb, layers, device, log)
    bb.assert_unchanged()  # the probes trained; the backbone must not have moved
    summary = summarise(history)
    result = {"format": FORMAT, "version": 1, "label": cfg.label or bb.method, "dataset": cfg.dataset,
              "protocol": cfg.protocol, "layers": layers,
              "top1": {n: s["final"] for n, s in summary.items()},
              "top1_best": {n: s["best"] for n, s in summary.items()},
              "best_epoch": {n: s["best_epoch"] for n, s in summary.items()},
              "history": {n: [[e, a] for e, a in h] for n, h in history.items()},
              "config": cfg.to_dict(), "checkpoint": checkpoint_facts(bb),
              "resolved": resolved | {"pooling": cfg.pooling,
                                      "variant": {"name": cfg.variant, "overrides": cfg.variant_overrides()},
                                      "milestones": milestones(cfg.schedule, cfg.epochs),
                                      "lr_per_epoch": [lr_at(e, cfg.schedule, cfg.epochs, cfg.lr)
                                                       for e in range(cfg.epochs)],
                                      "backbone_forward_calls": bb.forward_calls,
                                      "precision": "bf16" if bb.amp_dtype else "fp32"},
              "backbone_unchanged": True, "device": str(device), "git": git_revision(),
              "versions": library_versions(), "elapsed_s": round(time.time() - t0, 2),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_result(result, os.path.join(cfg.out, RESULT))
    log({"event": "done", "top1": result["top1"]})
    return result


# --------------------------------------------------------------------------- CLI


D = ProbeConfig()


def variant_help(name: str, what: str) -> str:
    return (f"{what} Default: from --variant (paper: {getattr(VARIANTS['paper'], name)}, released: "
            f"{getattr(VARIANTS['released'], name)}).")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", required=True, help="checkpoint.pt of any trainer, or its run folder.")
@click.option("--dataset", type=click.Choice(DATASETS), default=D.dataset, show_default=True)
@click.option("--data-root", required=True, help="CIFAR pickles (cifar-10-batches-py) or an ImageFolder tree.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Writes probe.json and log.jsonl.")
@click.option("--variant", type=click.Choice(sorted(VARIANTS)), default=D.variant, show_default=True,
              help="paper: the paper's text; released: every option below where yukimasano/linear-probes differs "
                   "(an option given on its own wins).")
@click.option("--epochs", default=D.epochs, show_default=True, type=click.IntRange(1),
              help="Fewer than 36 scales the lr milestones: round(m*E/36).")
@click.option("--schedule", type=click.Choice(sorted(SCHEDULES)), default=None,
              help=variant_help("schedule", "paper: /5 at 5,15,25; released: /10 at 10,20,30."))
@click.option("--lr", default=D.lr, show_default=True, type=Finite(0, 10, min_open=True))
@click.option("--momentum", default=D.momentum, show_default=True, type=Finite(0, 1, max_open=True))
@click.option("--weight-decay", default=D.weight_decay, show_default=True, type=Finite(0, 1))
@click.option("--batch-size", default=D.batch_size, show_default=True, type=click.IntRange(2))
@click.option("--workers", default=D.workers, show_default=True, type=click.IntRange(0),
              help="Loader processes (default: 2, or fewer when fewer CPUs are usable).")
@click.option("--device", default=D.device, show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=D.seed, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option("--layers", default="", help="Comma-separated subset, e.g. conv1,conv2 (default: all).")
@click.option("--pooling", type=click.Choice(("auto",) + POOLINGS), default=D.pooling, show_default=True,
              help="auto: none for the cifar protocol; for imagenet the variant's (paper: adaptive to ~9600 dims, "
                   "released: fixed MaxPool2d).")
@click.option("--ten-crop-average", type=click.Choice(TEN_CROP_AVERAGES), default=None,
              help=variant_help("ten_crop_average", "softmax: DeepCluster (the paper); logits: released probe code."))
@click.option("--probe-bn", type=click.Choice(PROBE_BNS), default=None,
              help=variant_help("probe_bn", "Non-affine BatchNorm before each linear layer: per feature, per "
                                            "channel (released), or none."))
@click.option("--linear-init", type=click.Choice(LINEAR_INITS), default=None,
              help=variant_help("linear_init", "default: torch's; xavier: the released xavier-uniform, bias 0."))
@click.option("--train-crop", type=click.Choice(TRAIN_CROPS), default=None,
              help=variant_help("train_crop", "imagenet protocol: fixed: shorter edge --resize, random --crop; "
                                              "resized: RandomResizedCrop(--crop)."))
@click.option("--skip-bad-images", is_flag=True,
              help="Leave out image files that cannot be decoded (counted in probe.json) instead of stopping.")
@click.option("--cache", default=D.cache, help="Feature cache folder (CIFAR protocol). Default: the user cache, "
                                               "$XDG_CACHE_HOME (or ~/.cache)/single-image-ssl/features.")
@click.option("--keep-cache/--drop-cache", default=D.keep_cache, show_default=True,
              help="--drop-cache deletes this run's feature cache files when the probes are done.")
@click.option("--cache-dtype", type=click.Choice(fcache.DTYPES), default=D.cache_dtype, show_default=True)
@click.option("--feature-batch-size", default=D.feature_batch_size, show_default=True, type=click.IntRange(1))
@click.option("--eval-every", default=D.eval_every, show_default=True, type=click.IntRange(1))
@click.option("--limit-train", default=D.limit_train, show_default=True, type=click.IntRange(0),
              help="Seeded subset of training images (quick checks only).")
@click.option("--limit-eval", default=D.limit_eval, show_default=True, type=click.IntRange(0))
@click.option("--resize", default=D.resize, show_default=True, type=click.IntRange(1),
              help="imagenet protocol: shorter edge.")
@click.option("--crop", default=D.crop, show_default=True, type=click.IntRange(1), help="imagenet protocol: crop size.")
@click.option("--label", default=D.label, help="Row label for probe.table (default: the checkpoint's method).")
@click.option("--overwrite", is_flag=True, help="Replace an existing probe.json in --out.")
@click.option("--threads", default=D.threads, show_default=True, type=click.IntRange(0),
              help="torch CPU threads for everything (0: torch's default for backbone passes, 1 for "
                   "CIFAR probe steps on cached features).")
@click.option("--protocol", type=click.Choice(["auto", "cifar", "imagenet"]), default=D.protocol, show_default=True,
              help="auto: cifar for cifar10/100 and ImageFolders of 32x32 images, imagenet for other ImageFolders.")
@click.option("--jobs", default=D.jobs, show_default=True, type=click.IntRange(1),
              help="CIFAR on the CPU: train the layers' probes in this many processes (same results).")
@click.option("--amp", type=click.Choice(AMP_CHOICES), default="cuda", show_default=True,
              help="bf16 autocast of the backbone pass. cuda: on CUDA only; on: also on a CPU with native bf16 "
                   "(fp32 elsewhere, said in one line); off: fp32.")
def main(**kw) -> None:
    """Train linear probes on every conv layer of a frozen, BN-folded checkpoint."""
    kw["layers"] = tuple(s.strip() for s in kw["layers"].split(",") if s.strip())
    created = not os.path.exists(kw["out"])
    try:
        result = run_probe(ProbeConfig(**kw))
    except KeyboardInterrupt:
        err = click.ClickException(f"interrupted before {kw['out']}/{RESULT} was written; the features already "
                                   f"cached are kept, and the same command starts again from them")
        err.exit_code = 130
        raise err from None
    finally:
        if created and not os.path.isfile(os.path.join(kw["out"], RESULT)):
            # a probe that did not finish leaves no folder of its own making behind (nor its log)
            with contextlib.suppress(OSError):
                os.remove(os.path.join(kw["out"], LOG))
            with contextlib.suppress(OSError):
                os.rmdir(kw["out"])
    for name in result["layers"]:
        click.echo(f"{name}: top-1 {result['top1'][name]:.2f} (best {result['top1_best'][name]:.2f} "
                   f"at epoch {result['best_epoch'][name]})")
    click.echo(f"wrote {os.path.join(kw['out'], RESULT)}", err=True)


if __name__ == "__main__":
    main()
