"""`make gpu-check`: every GPU path of the project measured in one prepared run of at most 8 minutes.

Writes ``docs/benchmarks-gpu.md`` (``--out``) with five sections:

1. **trainers**: each trainer's ``step`` at its default (paper) sizes on one batch already in GPU memory,
   bf16 autocast (``--amp on``), for up to ``--steps`` steps or ``--seconds`` each: steps/s and samples/s
   (RotNet also in fp32 and with ``--channels-last``, to choose the GPU defaults);
2. **loader**: RotNet, AlexNet-BN at 224, fed by the shard loader (``--workers`` = the CPU count) against
   the same model fed from a tensor already in GPU memory (``MemoryLoader``), and with ``--decode-device
   cuda`` (nvJPEG); goal: the loader costs under 10%;
3. **clustering**: DeepCluster's PCA (4096 -> 256, whitened) and k-means (k = 10,000, 20 iterations) at
   200,000 features: faiss on the GPU where faiss sees one, else a torch k-means on the GPU (it says which);
4. **probe**: one CIFAR-protocol probe run of one epoch (the backbone's feature pass over 60,000 images
   and a probe epoch per layer) through ``probe.linear.run_probe``;
5. **ddp**: RotNet steps in a DistributedDataParallel model of one process over NCCL, against the bare model.

Without a GPU it says so in one line, runs the same steps on the CPU at tiny sizes (the numbers mean
nothing; nothing is written to ``--out``) and exits 0, which is what its test checks. A section still
running when the time budget is spent is the last one; the ones after it are listed as skipped.
"""
from __future__ import annotations

import importlib
import itertools
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import click
import numpy as np
import torch

from tests.toyset import make_toy_set

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class Sizes:
    """How big each section's work is: the paper's sizes on a GPU, tiny ones on the CPU."""

    seconds: float            # timing window per trainer row
    steps: int                # at most this many steps per row
    trainers: tuple           # (module, label, config overrides, set size S)
    loader_count: int         # samples of the JPEG set the loader streams
    loader_kw: dict
    loader_size: int
    cluster_n: int
    cluster_d: int
    cluster_k: int
    cluster_pca: int
    probe_train: int          # CIFAR-shaped synthetic images (train split; test is a fifth of it)
    ddp_kw: dict


GPU = Sizes(
    seconds=8.0, steps=300,
    trainers=(("rotnet", "RotNet, AlexNet-BN 224, batch 192 (x4)", {}, 256),
              ("deepcluster", "DeepCluster, AlexNet-BN 224, batch 256 (k = 8 here; clustering: section 3)",
               {"k": 8, "pca_dim": 16}, 256),
              ("bigan", "BiGAN, crop 112, batch 128", {}, 128),
              ("monogan", "MonoGAN, 32, batch 64 (a step: 5 critic + 1 generator update)", {}, 32),
              ("supervised", "supervised, AlexNet-BN 224, batch 256", {}, 256),
              ("simclr", "SimCLR, AlexNet-BN 224, batch 256 (2 views)", {}, 256),
              ("dino", "DINO, AlexNet-BN 224, batch 64 (2 + 8 views)", {}, 256),
              ("distill", "distillation, WRN-16-4 student from a WRN-40-4 teacher, 32, batch 512",
               {"student_arch": "wrn16_4", "teacher_arch": "wrn40_4", "batch_size": 512}, 32)),
    loader_count=192 * 120, loader_kw={"arch": "alexnet", "batch_size": 192}, loader_size=256,
    cluster_n=200_000, cluster_d=4096, cluster_k=10_000, cluster_pca=256,
    probe_train=50_000, ddp_kw={"arch": "alexnet", "batch_size": 192})

CPU = Sizes(
    seconds=0.0, steps=2,
    trainers=(("rotnet", "RotNet, small, batch 4", {"arch": "small", "batch_size": 4}, 32),
              ("deepcluster", "DeepCluster, AlexNet-BN 64, batch 4", {"crop": 64, "batch_size": 4, "k": 2,
                                                                      "pca_dim": 2}, 64),
              ("bigan", "BiGAN, crop 64, batch 4", {"crop": 64, "batch_size": 4, "head_width": 32, "g_width": 8,
                                                    "d_width": 8}, 64),
              ("monogan", "MonoGAN, batch 4, 1 critic step", {"batch_size": 4, "n_critic": 1}, 32),
              ("supervised", "supervised, small, batch 4", {"arch": "small", "batch_size": 4}, 32),
              ("simclr", "SimCLR, small, batch 4", {"arch": "small", "batch_size": 4}, 32),
              ("dino", "DINO, small, batch 4, 2 + 1 views", {"arch": "small", "batch_size": 4, "local_crops": 1,
                                                             "out_dim": 64, "hidden": 32, "bottleneck": 16}, 32),
              ("distill", "distillation, small from small, batch 4",
               {"student_arch": "small", "teacher_arch": "small", "batch_size": 4, "eval_batches": 1}, 32)),
    loader_count=16, loader_kw={"arch": "alexnet", "batch_size": 4, "crop": 64}, loader_size=64,
    cluster_n=600, cluster_d=32, cluster_k=8, cluster_pca=8,
    probe_train=200, ddp_kw={"arch": "small", "batch_size": 4})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- 1. trainers


def make_folder(root: str, size: int, per_class: int = 8, splits: tuple[str, ...] = ("train",)) -> str:
    """A two-class ImageFolder (``splits``, train/ only by default) of random JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c in ("a", "b"):
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                    os.path.join(root, split, c, f"{i}.jpg"), quality=90)
    return root


def write_teacher(path: str, arch: str, classes: int, size: int) -> str:
    """A seeded random classifier of ``arch`` saved as a ``train.supervised`` checkpoint (a teacher whose
    speed, not accuracy, is measured)."""
    from train.checkpoint import checkpoint_dict, save_checkpoint
    from train.classifier import build_classifier
    from train.models import EncoderSpec

    torch.manual_seed(0)
    net = build_classifier(EncoderSpec(arch=arch), classes, size)
    save_checkpoint(checkpoint_dict(method="supervised", config={"arch": arch, "size": size}, encoder=net.encoder,
                                    state={"model": net.state_dict()}, epoch=1, step=1, train_seconds=0.0, rng={},
                                    git="", versions={}, extra={}), path)
    return path


def build(module: str, kw: dict, tmp: str, size: int, device: torch.device):
    """(method, run, one batch on the device) of a trainer built as its command builds it."""
    from train.run import Run

    mod = importlib.import_module(f"train.{module}")
    cls = next(v for v in vars(mod).values() if isinstance(v, type) and getattr(v, "name", "") == module)
    kw = dict(kw)
    batch = kw.get("batch_size", mod.Config.batch_size)
    out = os.path.join(tmp, f"run-{module}-{len(os.listdir(tmp))}")
    if module == "supervised":
        data = {"data": make_folder(os.path.join(tmp, f"folder-{size}"), size, per_class=max(4, batch // 2 + 1))}
    elif module == "distill":   # a two-class teacher, and eval data of its two classes
        folder = make_folder(os.path.join(tmp, f"eval-{size}"), size, per_class=4, splits=("test",))
        teacher = write_teacher(os.path.join(tmp, f"teacher-{len(os.listdir(tmp))}.pt"), kw.pop("teacher_arch"), 2,
                                size)
        data = {"teacher": teacher, "eval_data": folder, "eval_dataset": "imagefolder",
                "shards": make_toy_set(os.path.join(tmp, f"distill-{size}-set"), count=max(2 * batch, 16),
                                       size=size, per_shard=max(batch, 8))}
    else:
        data = {"shards": make_toy_set(os.path.join(tmp, f"{module}-{size}-set"), count=max(2 * batch, 16),
                                       size=size, per_shard=max(batch, 8))}
    cfg = mod.Config(**data, **({"out": out, "workers": 0, "device": str(device), "amp": "on"} | kw))
    method = cls(cfg)
    run = Run(cfg, method.name)
    method.build(run)
    method.begin_epoch(run, 0, 0)
    b = next(iter(method.loader.epoch(0)))
    on_device = lambda x: x.to(device) if isinstance(x, torch.Tensor) else [v.to(device) for v in x]
    return method, run, (on_device(b[0]), *b[1:])


def rate(method, run, batch, sizes: Sizes, device: torch.device) -> float:
    """Counted steps per second of ``method.step`` on ``batch``, after two warm-up steps."""
    per = getattr(method.cfg, "n_critic", 1)
    for _ in range(2 * per):
        method.step(run, batch)
    sync(device)
    t, n = time.perf_counter(), 0
    while n < sizes.steps and (n == 0 or time.perf_counter() - t < sizes.seconds):
        for _ in range(per):
            method.step(run, batch)
        n += 1
    sync(device)
    return n / (time.perf_counter() - t)


def trainers(sizes: Sizes, device: torch.device, tmp: str) -> str:
    rows = []
    cases = [(m, label, kw, s) for m, label, kw, s in sizes.trainers]
    r0 = cases[0]
    cases += [(r0[0], r0[1] + ", `--amp off`", r0[2] | {"amp": "off"}, r0[3]),
              (r0[0], r0[1] + ", `--channels-last`", r0[2] | {"channels_last": True}, r0[3])]
    for module, label, kw, size in cases:
        try:
            method, run, batch = build(module, kw, tmp, size, device)
        except ImportError as e:   # faiss for DeepCluster, where the image lacks it
            rows.append(f"| {label} | skipped: {e} | |")
            continue
        try:
            steps = rate(method, run, batch, sizes, device)
        finally:
            run.close()
        n = method.cfg.batch_size * getattr(method.cfg, "n_critic", 1)
        precision = "bf16" if run.amp_dtype else "fp32"
        rows.append(f"| {label} ({precision}) | {steps:.2f} | {steps * n:,.0f} |")
    peak = "" if device.type != "cuda" else \
        f"; peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
    return "\n".join(["## 1. Trainers on one batch in device memory\n",
                      f"Each trainer's `step` at these sizes, `--amp on` unless marked, after two warm-up steps, "
                      f"for up to {sizes.steps} steps or {sizes.seconds:.0f} s{peak}.\n",
                      "| trainer | steps/s | samples/s |", "|---|---|---|", *rows, ""])


# --------------------------------------------------------------------------- 2. loader vs memory


def render_jpeg_set(out: str, count: int, size: int, workers: int) -> str:
    """A JPEG shard set rendered by `augment render` from a generated source image."""
    from PIL import Image

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:768, 0:1024]
    src = (np.stack([np.sin(xx / 37.0), np.cos(yy / 23.0), np.sin((xx + yy) / 51.0)], -1) * 90 + 128
           + rng.normal(0, 12, (768, 1024, 3))).clip(0, 255).astype(np.uint8)
    path = os.path.join(os.path.dirname(out), "source.png")
    Image.fromarray(src).save(path)
    subprocess.run([sys.executable, "-m", "augment", "render", "--image", path, "--count", str(count), "--size",
                    str(size), "--format", "jpg", "--workers", str(workers), "--samples-per-shard",
                    str(max(1, count // (4 * workers))), "--quiet", "--out", out], check=True, cwd=ROOT)
    return out


def feed_rate(method, run, batches, warm: int, device: torch.device) -> float:
    """Steps/s over ``batches`` after the first ``warm`` (worker start-up and warm-up excluded)."""
    t, n = None, 0
    for i, batch in enumerate(batches):
        method.step(run, batch)
        if i + 1 == warm:
            sync(device)
            t = time.perf_counter()
        elif i + 1 > warm:
            n += 1
    sync(device)
    return n / (time.perf_counter() - t) if n else float("nan")


def loader(sizes: Sizes, device: torch.device, tmp: str) -> str:
    from train.config import available_cpus
    from train.loader.memory import MemoryLoader
    from train.rotnet import Config, RotNet
    from train.run import Run

    workers = available_cpus()
    shards = render_jpeg_set(os.path.join(tmp, "jpeg-set"), sizes.loader_count, sizes.loader_size, workers)
    cfg = Config(shards=shards, out=os.path.join(tmp, "loader-run"), workers=workers, device=str(device), amp="on",
                 **sizes.loader_kw)
    method = RotNet(cfg)
    run = Run(cfg, method.name)
    rows, warm = [], 3
    try:
        method.build(run)
        real = method.loader
        fed = feed_rate(method, run, real.epoch(0), warm, device)
        why = real.decode_on(device)
        gpu = float("nan") if why else feed_rate(method, run, real.epoch(1), warm, device)
        kept = [b[0].to(device) for b in itertools.islice(real.epoch(2), 8)]
        mem = MemoryLoader(torch.cat(kept), cfg.batch_size, seed=0)
        epochs = -(-real.batches_per_epoch // mem.batches_per_epoch)   # as many steps as the loader's epoch
        memory = feed_rate(method, run, (b for e in range(epochs) for b in mem.epoch(e)), warm, device)
    finally:
        run.close()
    b = cfg.batch_size
    rows.append(f"| from a tensor in GPU memory (`MemoryLoader`) | {memory:.2f} | {memory * b:,.0f} | - |")
    rows.append(f"| shard loader, decode on the CPU ({workers} workers) | {fed:.2f} | {fed * b:,.0f} | "
                f"{100 * (1 - fed / memory):.1f}% |")
    rows.append("| shard loader, `--decode-device cuda` | " +
                (f"not run: {why} | | |" if why else f"{gpu:.2f} | {gpu * b:,.0f} | {100 * (1 - gpu / memory):.1f}% |"))
    return "\n".join(["## 2. RotNet fed by the loader against memory\n",
                      f"RotNet, {cfg.arch}, crop {cfg.input_size}, batch {b} (x4 rotations), `--amp on`; "
                      f"a set of {sizes.loader_count:,} JPEG patches at S = {sizes.loader_size} rendered here; "
                      f"`--workers {workers}` (the CPU count); the first {warm} steps excluded. Goal: the "
                      f"loader costs under 10%.\n",
                      "| fed by | steps/s | samples/s | cost vs memory |", "|---|---|---|---|", *rows, ""])


# --------------------------------------------------------------------------- 3. clustering


def torch_pca_whiten(x: torch.Tensor, dim: int) -> torch.Tensor:
    """PCA to ``dim`` with whitening, rows L2-normalised: ``train.cluster.pca_whiten`` in torch."""
    mean = x.mean(0, keepdim=True)
    xc = x - mean
    cov = xc.T @ xc / (len(x) - 1)
    eig, vec = torch.linalg.eigh(cov.double())
    eig, vec = eig.flip(0)[:dim].float(), vec.flip(1)[:, :dim].float()
    y = xc @ (vec / eig.clamp_min(eig[0] * 1e-6).sqrt())
    return torch.nn.functional.normalize(y, dim=1)


def torch_kmeans(x: torch.Tensor, k: int, niter: int, seed: int, chunk: int = 32768) -> tuple[torch.Tensor, float]:
    """Lloyd's k-means on the device: (labels, final mean squared distance). An empty cluster takes a random
    point, as faiss's re-seeding does in spirit (faiss splits a large cluster instead)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    c = x[torch.randperm(len(x), generator=g, device=x.device)[:k]].clone()
    labels = torch.empty(len(x), dtype=torch.long, device=x.device)
    for _ in range(niter):
        half = 0.5 * (c * c).sum(1)
        best = torch.empty(len(x), device=x.device)
        for i in range(0, len(x), chunk):
            score = x[i:i + chunk] @ c.T - half
            best[i:i + chunk], labels[i:i + chunk] = score.max(1)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        empty = counts == 0
        c = sums / counts.clamp_min(1)[:, None]
        if empty.any():
            c[empty] = x[torch.randint(len(x), (int(empty.sum()),), generator=g, device=x.device)]
    obj = float(((x * x).sum(1) - 2 * best).mean())
    return labels, obj


def clustering(sizes: Sizes, device: torch.device, tmp: str) -> str:
    from train.cluster import faiss_gpus

    n, d, k = sizes.cluster_n, sizes.cluster_d, sizes.cluster_k
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, d, generator=g, device=device).clamp_min_(0)   # ReLU'd Gaussians, like fc7 outputs
    sync(device)
    t0 = time.perf_counter()
    y = torch_pca_whiten(x, sizes.cluster_pca)
    sync(device)
    t1 = time.perf_counter()
    labels, obj = torch_kmeans(y, k, 20, seed=0)
    sync(device)
    t2 = time.perf_counter()
    empty = int((torch.bincount(labels, minlength=k) == 0).sum())
    try:
        gpus = faiss_gpus()
    except ImportError:
        gpus = -1
    rows = [f"| torch on {device} | {t1 - t0:.2f} | {t2 - t1:.2f} | {empty} |"]
    if gpus > 0:
        from train.cluster import kmeans
        t = time.perf_counter()
        kmeans(y.cpu().numpy(), k, 20, seed=0, gpu=True)
        rows.append(f"| faiss on the GPU ({gpus} visible) | - | {time.perf_counter() - t:.2f} | - |")
    which = ("faiss sees a GPU here, so both are timed" if gpus > 0 else
             f"faiss-cpu sees no GPU, so the torch k-means on {device} is what is timed" if gpus == 0 else
             f"faiss is not installed here, so the torch k-means on {device} is what is timed")
    return "\n".join(["## 3. DeepCluster's clustering\n",
                      f"n = {n:,} random {d}-d features (ReLU'd Gaussians) on {device}, PCA to "
                      f"{sizes.cluster_pca} with whitening and L2 normalisation, k-means k = {k:,}, 20 "
                      f"iterations; {which}. Mean squared distance {obj:.4f}.\n",
                      "| k-means | PCA (s) | k-means (s) | empty clusters |", "|---|---|---|---|", *rows, ""])


# --------------------------------------------------------------------------- 4. probe


def write_cifar_pickles(root: str, n_train: int) -> str:
    """Random images in torchvision's CIFAR-10 pickle layout (5 train batches, 1 test batch)."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    per = max(1, n_train // 5)
    for name, count in [(f"data_batch_{i}", per) for i in range(1, 6)] + [("test_batch", max(10, n_train // 5))]:
        d = {b"data": rng.integers(0, 255, (count, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, count))}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f)
    return root


def probe(sizes: Sizes, device: torch.device, tmp: str) -> str:
    import json

    from probe.linear import ProbeConfig, run_probe
    from train.random_init import Config as RandomConfig, main as random_main

    ckpt = random_main(RandomConfig(out=os.path.join(tmp, "random-small"), arch="small"))
    data = write_cifar_pickles(os.path.join(tmp, "cifar"), sizes.probe_train)
    out = os.path.join(tmp, "probe")
    result = run_probe(ProbeConfig(checkpoint=ckpt, dataset="cifar10", data_root=data, out=out, epochs=1,
                                   device=str(device), amp="on", workers=min(8, os.cpu_count() or 1),
                                   cache=os.path.join(tmp, "probe-cache"), keep_cache=False))
    with open(os.path.join(out, "log.jsonl")) as f:
        events = [json.loads(line) for line in f][1:]
    feats = next(e["elapsed_s"] for e in events if e.get("event") == "features")
    return "\n".join(["## 4. A probe epoch (CIFAR protocol)\n",
                      f"`probe.linear` on a random small encoder, {sizes.probe_train:,} + "
                      f"{max(10, sizes.probe_train // 5):,} random CIFAR-shaped images, conv1-conv4, one "
                      f"epoch, `--amp on` ({result['resolved']['precision']} feature pass).\n",
                      "| phase | seconds |", "|---|---|",
                      f"| feature pass (both splits, into the cache) | {feats:.1f} |",
                      f"| one probe epoch, 4 layers | {result['elapsed_s'] - feats:.1f} |",
                      f"| whole run | {result['elapsed_s']:.1f} |", ""])


# --------------------------------------------------------------------------- 5. DDP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp(sizes: Sizes, device: torch.device, tmp: str) -> str:
    import torch.distributed as dist
    from torch import nn

    from train.classifier import DEFAULT_INPUT, build_classifier
    from train.models import EncoderSpec
    from train.run import amp_dtype, autocast

    kw = sizes.ddp_kw
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        side = DEFAULT_INPUT[kw["arch"]]
        x = torch.rand(kw["batch_size"] * 4, 3, side, side, device=device) * 2 - 1
        y = torch.randint(0, 4, (len(x),), device=device)
        dtype, _ = amp_dtype(device, "on")
        rates = {}
        for name in ("bare", "ddp"):
            torch.manual_seed(0)
            model = build_classifier(EncoderSpec(arch=kw["arch"]), 4, side).to(device)
            if name == "ddp":
                model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index or 0]
                                                            if device.type == "cuda" else None)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

            def step():
                with autocast(device, dtype):
                    loss = nn.functional.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            step()
            sync(device)
            t, n = time.perf_counter(), 0
            while n < sizes.steps and (n == 0 or time.perf_counter() - t < sizes.seconds):
                step()
                n += 1
            sync(device)
            rates[name] = n / (time.perf_counter() - t)
        check = torch.ones(1, device=device)
        dist.all_reduce(check)
    finally:
        dist.destroy_process_group()
    return "\n".join(["## 5. DDP, one process\n",
                      f"RotNet's classifier ({kw['arch']}, batch {kw['batch_size']} x4), bf16 autocast, wrapped in "
                      f"DistributedDataParallel in a process group of one over {backend.upper()} (an all-reduce "
                      f"gave {check.item():.0f}), against the same model unwrapped.\n",
                      "| model | steps/s |", "|---|---|", f"| bare | {rates['bare']:.2f} |",
                      f"| DDP, 1 process | {rates['ddp']:.2f} "
                      f"({100 * (1 - rates['ddp'] / rates['bare']):+.1f}% cost) |",
                      ""])


SECTIONS = [("trainers", trainers), ("loader", loader), ("clustering", clustering), ("probe", probe), ("ddp", ddp)]


def report(device: torch.device, sizes: Sizes, budget_s: float, only: tuple[str, ...] = ()) -> tuple[str, list]:
    """Run the sections in order until ``budget_s`` is spent; (Markdown, names of skipped sections)."""
    t0, parts, skipped = time.perf_counter(), [], []
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU (CPU, tiny sizes)"
    head = (f"# GPU check\n\nMeasured by `make gpu-check` on {name}, torch {torch.__version__}, "
            f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}.\n")
    with tempfile.TemporaryDirectory() as tmp:
        for sec, fn in SECTIONS:
            if only and sec not in only:
                continue
            if time.perf_counter() - t0 > budget_s:
                skipped.append(sec)
                continue
            click.echo(f"== {sec}", err=True)
            t = time.perf_counter()
            parts.append(fn(sizes, device, tmp) + f"\n({sec}: {time.perf_counter() - t:.0f} s)\n")
    if skipped:
        parts.append(f"Skipped (the {budget_s:.0f} s budget was spent): {', '.join(skipped)}.\n")
    return "\n".join([head, *parts]), skipped


@click.command()
@click.option("--out", default="docs/benchmarks-gpu.md", show_default=True, help="Written only when a GPU ran it.")
@click.option("--budget", default=400, show_default=True, type=click.IntRange(1),
              help="Seconds after which no further section starts (the last one started runs to its end).")
@click.option("--only", multiple=True, type=click.Choice([s for s, _ in SECTIONS]))
def main(out: str, budget: int, only: tuple[str, ...]) -> None:
    """Measure every GPU path (docs/benchmarks-gpu.md); without a GPU, check the same steps on the CPU."""
    cuda = torch.cuda.is_available()
    if not cuda:
        click.echo("gpu-check: no CUDA device here; running the same steps on the CPU at tiny sizes (numbers "
                   f"meaningless, {out} not written)")
    device = torch.device("cuda" if cuda else "cpu")
    text, _ = report(device, GPU if cuda else CPU, budget, only)
    if cuda:
        with open(out, "w") as f:
            f.write(text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text)


if __name__ == "__main__":
    main()
