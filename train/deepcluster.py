"""DeepCluster (Caron et al. 2018) on a shard set: ``python -m train.deepcluster --shards SET --out DIR``.

Every epoch (``begin_epoch``): (1) the 4096-d fc7 features of every sample, on centre crops, model in
eval mode (the loader's one-pass mode); (2) PCA to 256 with whitening, rows L2-normalised; (3) faiss
k-means (k = 10,000, 20 iterations, a new seed each epoch) -> one pseudo-label per sample index; (4) the
top layer re-initialised; (5) one pass of training on random-resized crops drawn uniformly over
non-empty clusters.

Shards are streams, not indexable datasets, so uniform-over-clusters sampling is applied as per-sample
multiplicities fed to the common loader (``cluster.multiplicities``: exactly DeepCluster's per-cluster
quotas): every slot reads its own shards once and emits each sample that many times into its shuffle
buffer. The epoch length is therefore known before it starts, and a run stopped mid-epoch resumes
exactly (the epoch's assignment is in the checkpoint). docs/deepcluster.md discusses the choice.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import click
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from train import cluster
from train.classifier import cross_entropy_step
from train.config import CommonConfig, command, option
from train.loader import (check_local_shards, make_loader, prepare, random_resized_crop_flip, resize_center_crop,
                          with_transform)
from train.loop import Method, echo_stats, fit
from train.models import AlexNetClassifier, EncoderSpec
from train.run import Run, unwrap

FEATURE_DIM = 4096


@dataclass(frozen=True)
class Config(CommonConfig):
    """DeepCluster options; defaults are the paper's / the original code's (docs/deepcluster.md)."""

    out: str = "runs/deepcluster"
    batch_size: int = 256
    epochs: int = 200
    k: int = option(10000, "k-means clusters.", lo=2)
    pca_dim: int = option(256, "PCA dimension (whitened, then L2-normalised) before k-means.", lo=1)
    kmeans_iters: int = option(20, "k-means iterations.", lo=1)
    crop: int = option(224, "Network input side: random-resized crops in training, centre crops for features.",
                       lo=63)
    lr: float = option(0.05, "SGD learning rate (body and top layer).", lo=0, lo_open=True)
    momentum: float = option(0.9, "SGD momentum of the body.", lo=0, hi=1, hi_open=True)
    weight_decay: float = option(1e-5, "L2 weight decay.", lo=0)
    sobel: bool = option(False, "Fixed grey + Sobel front end: the released DeepCluster run script's variant.")
    variant: str = option("paper", "Sets --features at once (docs/variants.md); explicit options win.",
                          choices=("paper", "released"))
    features: str = option("post-relu", "Cluster fc7 after its ReLU (post-relu) or before it (pre-relu: the "
                           "released code). --feature-relu/--no-feature-relu is an alias.",
                           choices=("post-relu", "pre-relu"))
    shuffle_buffer: int = option(10000, "Draws held in each worker's shuffle buffer (encoded bytes; repeats "
                                 "share memory).", lo=1)

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("k", "crop", "sobel")
    VARIANTS: ClassVar[dict] = {"released": {"features": "pre-relu"}}
    ALIASES: ClassVar[dict] = {"feature_relu": ("features", {True: "post-relu", False: "pre-relu"})}

    @property
    def feature_relu(self) -> bool:
        return self.features == "post-relu"


def build_model(cfg: Config) -> AlexNetClassifier:
    """AlexNet-BN + fc6/fc7 + a k-way top layer for ``cfg.crop`` inputs; too small a crop is a clear error."""
    try:
        return AlexNetClassifier(EncoderSpec(arch="alexnet", sobel=cfg.sobel), cfg.k, input_size=cfg.crop)
    except RuntimeError:
        raise click.ClickException(f"--crop {cfg.crop} is too small for AlexNet (its pools need at least "
                                   f"63 pixels); use --crop 63 or more (the paper: 224)") from None


def check_saved_features(saved: dict | None, cfg: Config) -> None:
    """A checkpoint from before ``--features`` records ``feature_relu``: resuming it with the other
    features would silently change what is clustered, so that is refused in one line."""
    old = (saved or {}).get("config", {})
    if "features" in old or "feature_relu" not in old:
        return
    was = "post-relu" if old["feature_relu"] else "pre-relu"
    if was != cfg.features:
        raise click.ClickException(f"--resume: this run clustered {was} fc7 features (its checkpoint records "
                                   f"feature_relu={old['feature_relu']}); pass --features {was} to continue it")


def reinit_top(net: AlexNetClassifier) -> None:
    """Re-initialise the top layer in place (N(0, 0.01), zero bias): a new module would escape DDP."""
    with torch.no_grad():
        nn.init.normal_(net.top.weight, 0, 0.01)
        nn.init.zeros_(net.top.bias)


def embed(net: AlexNetClassifier, x: torch.Tensor, relu: bool) -> torch.Tensor:
    """fc7 output: after its ReLU (``embed()``), or before it as the released code clusters."""
    return net.embed(x) if relu else net.mlp[:-1](torch.flatten(net.encoder(x), 1))


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


class DeepCluster(Method):
    name, Config = "deepcluster", Config

    def check(self) -> None:
        """Fail fast on what would stop the run later (missing shards, too few samples for k or the PCA)."""
        super().check()
        m = self.manifest()
        check_local_shards(m)
        cluster.check_sizes(m.count, self.cfg.k, self.cfg.pca_dim, m.root)

    def build(self, run: Run) -> dict:
        cfg = self.cfg
        check_saved_features(run.saved, cfg)
        self.loader = make_loader(self.manifest(), batch_size=cfg.batch_size, workers=cfg.workers,
                                  seed=cfg.seed, transform=random_resized_crop_flip(cfg.crop), rank=run.dist.rank,
                                  world_size=run.dist.world_size, shuffle_buffer=cfg.shuffle_buffer,
                                  pin_memory=run.device.type == "cuda", verify_stream=cfg.verify_stream)
        self.feature_loader = with_transform(self.loader, resize_center_crop(cfg.crop))
        self.model = run.wrap(build_model(cfg))
        net = unwrap(self.model)
        self.encoder = net.encoder
        body = [p for name, p in net.named_parameters() if not name.startswith("top.")]
        self.opt = torch.optim.SGD(body, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        # The original's top-layer optimiser: plain SGD (no momentum, so no state), new every epoch.
        self.top_opt = torch.optim.SGD(net.top.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.labels = self.prev = None
        self.labels_epoch, self.record = -1, {}
        return {"model": self.model, "optimizer": self.opt}

    @torch.inference_mode()
    def features(self, run: Run) -> np.ndarray:
        """DeepCluster's feature pass: fc7 features (count x 4096, float32) of every sample, eval mode."""
        net, count = unwrap(self.model).eval(), self.loader.manifest.count
        out = np.zeros((count, FEATURE_DIM), dtype=np.float32)
        seen = np.zeros(count, dtype=np.int64)
        batches = self.feature_loader.once(run.epoch)
        for images, idx in run.progress(batches, len(batches), "features"):
            if int(idx.min()) < 0 or int(idx.max()) >= count:
                raise click.ClickException(f"sample index {int(idx.max())} outside the manifest's count {count}; "
                                           f"check the set with `python -m augment verify`")
            with run.autocast():
                f = embed(net, prepare(images, run.device), self.cfg.feature_relu)
            out[idx.numpy()] = f.float().cpu().numpy()
            np.add.at(seen, idx.numpy(), 1)
        if not (seen == 1).all():
            missing, twice = int((seen == 0).sum()), int((seen > 1).sum())
            raise click.ClickException(f"feature pass: {missing} samples missing and {twice} read twice; the "
                                       f"shards do not match the manifest: `python -m augment verify`")
        return out

    def begin_epoch(self, run: Run, epoch: int, skip: int) -> None:
        """Features -> PCA -> k-means -> fresh top layer -> this epoch's multiplicities. A resume in the
        middle of an epoch keeps the epoch's assignment and top layer (both in the checkpoint)."""
        cfg, t0 = self.cfg, time.perf_counter()
        if not (skip and self.labels_epoch == epoch):
            feats = self.features(run)
            t_feat = round(time.perf_counter() - t0, 3)
            if self.labels is not None:
                self.prev = self.labels
            self.labels, info = cluster_features(run, feats, cfg, epoch)
            del feats
            self.labels_epoch = epoch
            reinit_top(unwrap(self.model))
            self.record = {"features_s": t_feat, **info, **cluster.cluster_stats(self.labels, cfg.k),
                           "nmi_prev": None if self.prev is None else round(cluster.nmi(self.labels, self.prev), 5)}
        self.loader.set_multiplicities(cluster.multiplicities(self.labels, cfg.k, self.loader.manifest.count,
                                                              cfg.seed, epoch))
        self.targets = torch.from_numpy(self.labels)
        self.model.train()
        self.steps, self.t_train = 0, time.perf_counter()

    def step(self, run: Run, batch) -> dict:
        images, idx = batch
        y = self.targets[idx].to(run.device, non_blocking=True)
        self.steps += 1
        return cross_entropy_step(run, self.model, [self.opt, self.top_opt], prepare(images, run.device), y)

    def end_epoch(self, run: Run, epoch: int, complete: bool) -> dict:
        rec = self.record | {"train_steps": self.steps, "train_s": round(time.perf_counter() - self.t_train, 3)}
        run.echo(f"epoch {epoch}: nmi_prev {rec['nmi_prev']} empty {rec['clusters_empty']} largest "
                 f"{rec['cluster_largest']} | features {rec['features_s']}s pca {rec.get('pca_s')}s kmeans "
                 f"{rec.get('kmeans_s')}s train {rec['train_s']}s")
        return rec

    def extra_state(self) -> dict:
        return {"assignment": torch.from_numpy(self.labels), "assignment_epoch": self.labels_epoch,
                "previous": None if self.prev is None else torch.from_numpy(self.prev), "k": self.cfg.k,
                "record": self.record}

    def load_extra(self, extra: dict) -> None:
        if "assignment" in extra:
            # An assignment of a complete epoch is the next epoch's "previous" one.
            self.labels = extra["assignment"].numpy()
            self.labels_epoch = int(extra.get("assignment_epoch", -1))
            prev = extra.get("previous")
            self.prev = None if prev is None else prev.numpy()
            self.record = extra.get("record", {})


def main(cfg: Config) -> dict:
    """Train DeepCluster on ``cfg.shards``; returns the last epoch's log record."""
    return fit(DeepCluster(cfg))


cli = command(Config, lambda cfg: echo_stats(main(cfg)),
              "DeepCluster pre-training on a shard set (Caron et al. 2018, as used by Asano et al. 2020).")

if __name__ == "__main__":
    cli()
