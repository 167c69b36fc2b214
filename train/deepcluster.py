"""DeepCluster (Caron et al. 2018) on a shard set: ``python -m train.deepcluster --shards SET --out DIR``.

Every epoch: (1) the 4096-d fc7 features of every sample, on centre crops, model in eval mode;
(2) PCA to 256 with whitening, rows L2-normalised; (3) faiss k-means (k = 10,000, 20 iterations, a new
seed each epoch) -> one pseudo-label per sample index; (4) the top layer re-initialised with a fresh
optimiser; (5) one pass of training on random-resized crops drawn uniformly over non-empty clusters.

Shards are streams, not indexable datasets, so uniform-over-clusters sampling is applied as per-sample
multiplicities: ``cluster.multiplicities`` fixes how many times each sample index is drawn this epoch
(exactly DeepCluster's per-cluster quotas), and every (rank, worker) slot reads its own shards once,
emitting each sample that many times into a shuffle buffer of encoded bytes (copies share one bytes
object) before decoding and augmenting each copy separately. The epoch length is therefore known before
it starts. docs/deepcluster.md discusses the choice and its limits.
"""
from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass
from typing import ClassVar, Iterator

import click
import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
# Imported here, once, not lazily in each DataLoader worker: it takes seconds and forked workers inherit it.
from torchvision.transforms.v2 import functional as F

from augment.manifest import Manifest, read_manifest
from train import cluster
from train.data import center_crop, check_local_shards, decode_image, prepare, random_resized_crop_flip
from train.engine import CommonConfig, Run, common_options, unwrap
from train.models import AlexNetClassifier, EncoderSpec

FEATURE_DIM = 4096


@dataclass(frozen=True)
class Config(CommonConfig):
    """DeepCluster options; defaults are the paper's / the original code's (docs/deepcluster.md)."""

    batch_size: int = 256
    epochs: int = 200
    k: int = 10000
    pca_dim: int = 256
    kmeans_iters: int = 20
    crop: int = 224
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-5
    sobel: bool = False           # see docs/deepcluster.md: the paper's Figure 2 shows RGB conv1 filters
    feature_relu: bool = True
    shuffle_buffer: int = 10000

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("k", "crop", "sobel")


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint32)[0])


# --------------------------------------------------------------------------- the two streams


def feature_transform(crop: int):
    """Resize the short side to crop * 256 / 224 (256 for 224), then centre-crop ``crop``, as DeepCluster."""
    side, cc = round(crop * 256 / 224), center_crop(crop)

    def t(img: torch.Tensor) -> torch.Tensor:
        if min(img.shape[-2:]) != side:
            img = F.resize(img, [side], antialias=True)
        return cc(img, None)

    return t


class FeatureStream(IterableDataset):
    """Every sample exactly once, in shard order, centre-cropped: ``(uint8 images, int64 indices)`` batches.

    Workers split the shards (worker w reads shards w, w + W, ...); the last batch of a worker may be short.
    """

    def __init__(self, urls: list[str], ext: str, crop: int, batch_size: int):
        super().__init__()
        self.urls, self.ext, self.crop, self.batch_size = list(urls), ext, crop, batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info else (0, 1)
        mine = self.urls[w::n]
        if not mine:
            return
        ext, t = self.ext, feature_transform(self.crop)
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(mine), wds.tarfile_to_samples(),
            wds.map(lambda s: (t(decode_image(s[ext])), int(s["__key__"]))),
            wds.batched(self.batch_size, collation_fn=_collate, partial=True))
        yield from pipeline


def _collate(items):
    return torch.stack([i for i, _ in items]), torch.tensor([k for _, k in items], dtype=torch.int64)


def slot_parts(n_shards: int, seed: int, epoch: int, slot: int, n_slots: int) -> list[tuple[int, int, int]]:
    """``(shard, part, parts)`` read by one slot: keep samples with ``(index - first) % parts == part``.

    Shards are permuted per epoch and dealt round-robin; with fewer shards than slots, the slots that
    share a shard split it by sample, so every sample is read by exactly one slot.
    """
    order = np.random.default_rng(_seed(seed, epoch, 0x5D)).permutation(n_shards)
    if n_shards >= n_slots:
        return [(int(s), 0, 1) for s in order[slot::n_slots]]
    j = slot % n_shards
    return [(int(order[j]), slot // n_shards, len(range(j, n_slots, n_shards)))]


def slot_draws(m: Manifest, mult: np.ndarray, parts: list[tuple[int, int, int]]) -> int:
    """Number of draws (samples counted with multiplicity) a slot emits."""
    total = 0
    for s, part, n in parts:
        e = m.shards[s]
        total += int(mult[e.first + part:e.first + e.count:n].sum())
    return total


def batch_plan(m: Manifest, mult: np.ndarray, batch_size: int, seed: int, epoch: int, world: int,
               workers: int) -> np.ndarray:
    """Full batches per (rank, worker) this epoch, trimmed so that every rank has the same total (DDP)."""
    plan = np.array([[slot_draws(m, mult, slot_parts(len(m.shards), seed, epoch, r * workers + w,
                                                     world * workers)) // batch_size
                      for w in range(workers)] for r in range(world)], dtype=np.int64)
    target = int(plan.sum(1).min())
    for r in range(world):
        while plan[r].sum() > target:  # trim the richest worker first: keeps the slots balanced
            plan[r, int(plan[r].argmax())] -= 1
    return plan


class UniformStream(IterableDataset):
    """One epoch of training batches drawn uniformly over non-empty clusters (see the module docstring)."""

    def __init__(self, m: Manifest, mult: np.ndarray, plan: np.ndarray, crop: int, batch_size: int,
                 seed: int, epoch: int, rank: int = 0, world: int = 1, shuffle_buffer: int = 10000):
        super().__init__()
        self.m, self.mult, self.plan, self.crop, self.batch_size = m, mult, plan, crop, batch_size
        self.seed, self.epoch, self.rank, self.world, self.buffer = seed, epoch, rank, world, shuffle_buffer

    def _draws(self, parts):
        mult, urls, ext = self.mult, self.m.shard_urls, self.m.image_format
        for s, part, n in parts:
            first = self.m.shards[s].first
            for sample in wds.tarfile_to_samples()([{"url": urls[s]}]):
                idx = int(sample["__key__"])
                if (idx - first) % n == part:
                    yield from itertools.repeat((sample[ext], idx), int(mult[idx]))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        w, workers = (info.id, info.num_workers) if info else (0, 1)
        parts = slot_parts(len(self.m.shards), self.seed, self.epoch, self.rank * workers + w,
                           self.world * workers)
        slot_seed = _seed(self.seed, self.epoch, self.rank, w)
        gen, aug = torch.Generator().manual_seed(slot_seed), random_resized_crop_flip(self.crop)
        pipeline = wds.DataPipeline(
            lambda: self._draws(parts),
            wds.shuffle(self.buffer, initial=min(self.buffer, 1000), rng=random.Random(slot_seed)),
            wds.map(lambda d: (aug(decode_image(d[0]), gen), d[1])),
            wds.batched(self.batch_size, collation_fn=_collate, partial=False))
        yield from itertools.islice(pipeline, int(self.plan[self.rank, w]))


# --------------------------------------------------------------------------- model, phases, loop


def build_model(cfg: Config) -> AlexNetClassifier:
    """AlexNet-BN + fc6/fc7 + a k-way top layer for ``cfg.crop`` inputs; too small a crop is a clear error."""
    try:
        return AlexNetClassifier(EncoderSpec(arch="alexnet", sobel=cfg.sobel), cfg.k, input_size=cfg.crop)
    except RuntimeError:
        raise click.ClickException(f"--crop {cfg.crop} is too small for AlexNet (its pools need at least "
                                   f"63 pixels); use --crop 63 or more (the paper: 224)") from None


def reinit_top(net: AlexNetClassifier) -> None:
    """Re-initialise the top layer in place (N(0, 0.01), zero bias): a new module would escape DDP."""
    with torch.no_grad():
        nn.init.normal_(net.top.weight, 0, 0.01)
        nn.init.zeros_(net.top.bias)


def embed(net: AlexNetClassifier, x: torch.Tensor, relu: bool) -> torch.Tensor:
    """fc7 output: after its ReLU (``embed()``), or before it as the released code clusters."""
    return net.embed(x) if relu else net.mlp[:-1](torch.flatten(net.encoder(x), 1))


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, count: int, run: Run, relu: bool = True) -> np.ndarray:
    """DeepCluster's feature pass: fc7 features (count x 4096, float32) of every sample, eval mode."""
    net = unwrap(model).eval()
    out = np.zeros((count, FEATURE_DIM), dtype=np.float32)
    seen = np.zeros(count, dtype=np.int64)
    for images, idx in run.progress(loader, -(-count // loader.dataset.batch_size), "features"):
        if int(idx.min()) < 0 or int(idx.max()) >= count:
            raise click.ClickException(f"sample index {int(idx.max())} outside the manifest's count {count}; "
                                       f"check the set with `python -m augment verify`")
        with run.autocast():
            f = embed(net, prepare(images, run.device), relu)
        out[idx.numpy()] = f.float().cpu().numpy()
        np.add.at(seen, idx.numpy(), 1)
    if not (seen == 1).all():
        missing, twice = int((seen == 0).sum()), int((seen > 1).sum())
        raise click.ClickException(f"feature pass: {missing} samples missing and {twice} read twice; the "
                                   f"shards do not match the manifest: `python -m augment verify`")
    return out


def train_one_epoch(model: nn.Module, opt: torch.optim.Optimizer, top_opt: torch.optim.Optimizer,
                    loader: DataLoader, total: int, labels: torch.Tensor, run: Run) -> dict:
    """One pass over the epoch's uniform stream; mean loss and accuracy on the pseudo-labels."""
    model.train()
    crit = nn.CrossEntropyLoss()
    n = loss_sum = correct = steps = 0
    t0 = time.perf_counter()
    for images, idx in run.progress(loader, total, f"epoch {run.epoch}"):
        y = labels[idx].to(run.device, non_blocking=True)
        with run.autocast():
            logits = model(prepare(images, run.device))
        loss = crit(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        top_opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        top_opt.step()
        lv = loss.item()
        run.check_finite(lv)
        steps, n = steps + 1, n + len(y)
        loss_sum += lv * len(y)
        correct += int((logits.argmax(1) == y).sum())
        if steps % run.cfg.log_every == 0:
            run.log({"loss": round(lv, 5), "lr": opt.param_groups[0]["lr"]})
        if run.tick():
            break
    return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1), "train_steps": steps,
            "train_s": round(time.perf_counter() - t0, 3), "complete": steps == total}


def cluster_features(run: Run, features: np.ndarray, cfg: Config, epoch: int) -> tuple[np.ndarray, dict]:
    """PCA + k-means on the main rank; every rank receives the assignment (int64 per sample index)."""
    info: dict = {}
    labels = np.zeros(len(features), dtype=np.int64)
    if run.dist.is_main:
        seed = cluster.cluster_seed(cfg.seed, epoch)
        res, info = cluster.run_clustering(features, cfg.k, cfg.pca_dim, cfg.kmeans_iters, seed)
        labels = res.labels
        info |= {"kmeans_seed": seed, "kmeans_loss": round(res.loss, 5), "faiss_gpu": res.gpu}
    if run.dist.enabled:
        t = torch.from_numpy(labels).to(run.device)
        dist.broadcast(t, 0)
        labels = t.cpu().numpy()
    return labels, info


def train_loader(m: Manifest, labels: np.ndarray, cfg: Config, run: Run, epoch: int):
    """This epoch's uniform stream as a DataLoader, and its number of batches on this rank."""
    workers = max(cfg.workers, 1)
    mult = cluster.multiplicities(labels, cfg.k, m.count, cfg.seed, epoch)
    plan = batch_plan(m, mult, cfg.batch_size, cfg.seed, epoch, run.dist.world_size, workers)
    total = int(plan[run.dist.rank].sum())
    if total < 1:
        raise click.ClickException(f"{m.root}: {m.count} samples make no full batch of --batch-size "
                                   f"{cfg.batch_size} per worker; lower --batch-size or --workers")
    ds = UniformStream(m, mult, plan, cfg.crop, cfg.batch_size, cfg.seed, epoch, run.dist.rank,
                       run.dist.world_size, cfg.shuffle_buffer)
    return DataLoader(ds, batch_size=None, num_workers=cfg.workers,
                      prefetch_factor=4 if cfg.workers else None), total


def deepcluster_epoch(model, opt, m: Manifest, cfg: Config, run: Run, epoch: int,
                      prev: np.ndarray | None) -> tuple[np.ndarray, dict]:
    """Features -> PCA -> k-means -> fresh top layer -> training; returns the assignment and the log record."""
    net = unwrap(model)
    t0 = time.perf_counter()
    feats = evaluate(model, feature_loader(m, cfg), m.count, run, cfg.feature_relu)
    t_feat = round(time.perf_counter() - t0, 3)
    labels, info = cluster_features(run, feats, cfg, epoch)
    del feats
    reinit_top(net)
    # The original's top-layer optimiser: plain SGD (no momentum), new every epoch.
    top_opt = torch.optim.SGD(net.top.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader, total = train_loader(m, labels, cfg, run, epoch)
    stats = train_one_epoch(model, opt, top_opt, loader, total, torch.from_numpy(labels), run)
    rec = {"event": "epoch", "features_s": t_feat, **info, **cluster.cluster_stats(labels, cfg.k), **stats,
           "nmi_prev": None if prev is None else round(cluster.nmi(labels, prev), 5)}
    return labels, rec


def feature_loader(m: Manifest, cfg: Config) -> DataLoader:
    """The feature pass's DataLoader: at most one worker per shard (no worker without a shard)."""
    return DataLoader(FeatureStream(m.shard_urls, m.image_format, cfg.crop, cfg.batch_size), batch_size=None,
                      num_workers=min(cfg.workers, len(m.shards)))


def check_set(cfg: Config) -> Manifest:
    """Read the set and fail fast on what would stop the run later (missing shards, too few samples)."""
    if not cfg.shards:
        raise click.ClickException("--shards is required: a folder rendered by `python -m augment render`")
    m = read_manifest(cfg.shards)
    check_local_shards(m)
    cluster.check_sizes(m.count, cfg.k, cfg.pca_dim, m.root)
    return m


def main(cfg: Config) -> dict:
    """Train DeepCluster on ``cfg.shards``; returns the last epoch's log record."""
    m = check_set(cfg)
    run = Run(cfg, "deepcluster")
    if run.cfg != cfg:  # --resume: k and crop come from the checkpoint
        cfg = run.cfg
        m = check_set(cfg)
    model = run.wrap(build_model(cfg))
    body = [p for name, p in unwrap(model).named_parameters() if not name.startswith("top.")]
    opt = torch.optim.SGD(body, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    state = run.restore({"model": model, "optimizer": opt})
    prev = state.extra.get("assignment")
    prev = None if prev is None else prev.numpy()
    rec: dict = {}
    for epoch in range(state.epoch, cfg.epochs):
        run.epoch = epoch
        labels, rec = deepcluster_epoch(model, opt, m, cfg, run, epoch, prev)
        run.log(rec)
        run.echo(f"epoch {epoch}: loss {rec['loss']:.4f} acc {rec['acc']:.3f} nmi_prev {rec['nmi_prev']} "
                 f"empty {rec['clusters_empty']} largest {rec['cluster_largest']} | features "
                 f"{rec['features_s']}s pca {rec.get('pca_s')}s kmeans {rec.get('kmeans_s')}s "
                 f"train {rec['train_s']}s")
        prev = labels
        done = epoch + 1 if rec["complete"] else epoch  # an interrupted epoch is redone on --resume
        run.save({"model": model, "optimizer": opt}, unwrap(model).encoder, done,
                 extra={"assignment": torch.from_numpy(labels), "k": cfg.k})
        if run.done:
            break
    run.close()
    return rec


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@common_options(batch_size=256, epochs=200, out="runs/deepcluster")
@click.option("--k", "k", default=10000, show_default=True, type=click.IntRange(2), help="k-means clusters.")
@click.option("--pca-dim", default=256, show_default=True, type=click.IntRange(1),
              help="PCA dimension (whitened, then L2-normalised) before k-means.")
@click.option("--kmeans-iters", default=20, show_default=True, type=click.IntRange(1))
@click.option("--crop", default=224, show_default=True, type=click.IntRange(63),
              help="Network input side: random-resized crops in training, centre crops for features.")
@click.option("--lr", default=0.05, show_default=True, type=float)
@click.option("--momentum", default=0.9, show_default=True, type=float)
@click.option("--weight-decay", default=1e-5, show_default=True, type=float)
@click.option("--sobel/--no-sobel", default=False, show_default=True,
              help="Fixed grey + Sobel front end: the released DeepCluster run script's variant.")
@click.option("--feature-relu/--no-feature-relu", default=True, show_default=True,
              help="Cluster fc7 after its ReLU (default) or before it (the released code).")
@click.option("--shuffle-buffer", default=10000, show_default=True, type=click.IntRange(1),
              help="Draws held in each worker's shuffle buffer (encoded bytes; repeats share memory).")
@click.option("--log-every", default=20, show_default=True, type=click.IntRange(1))
def cli(**kw) -> None:
    """DeepCluster pre-training on a shard set (Caron et al. 2018, as used by Asano et al. 2020)."""
    main(Config(**kw))


if __name__ == "__main__":
    cli()
