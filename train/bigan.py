"""BiGAN (Donahue et al., 2017) on a shard set: encoder E, generator G, joint discriminator D(x, z).

``python -m train.bigan --shards SET --out DIR`` reads S = 128 sets (the paper), takes BiGAN's native
augmentation (a random ``--crop`` = 112 window and a horizontal flip) and trains with the standard
non-saturating BiGAN loss:

    D:    -log D(x, E(x)) - log(1 - D(G(z), z))
    E, G: -log(1 - D(x, E(x))) - log D(G(z), z)

E is the paper's AlexNet-BN with leaky ReLU (``E.encoder``, conv1..conv5, what every probe reads) plus
a fully connected head to the 200-d latent. Choices and their sources: docs/gans.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import math

import click
import torch
import torch.nn.functional as F
from torch import nn

from augment.manifest import read_manifest
from train.common_cli import cli_run
from train.data import make_loader, prepare, random_crop_flip
from train.engine import CommonConfig, Run, common_options, unwrap
from train.gan_models import (BiGANEncoder, JointDiscriminator, Meter, UpGenerator, fixed_noise,
                              pair_grid, run_gan_epochs, save_grid, training_noise)

METHOD = "bigan"
SHEET = 64     # generated samples per PNG sheet (8 x 8)
RECON = 16     # real images shown beside their reconstructions G(E(x))
MIN_CROP = 64  # AlexNet's conv/pool stack needs about 63 px to keep a 1 x 1 map after conv5's pool


@dataclass(frozen=True)
class Config(CommonConfig):
    batch_size: int = 128
    epochs: int = 100
    crop: int = 112
    gen_size: int = 0  # G's output and D's input side; 0: the crop (the original's high-res run: 64)
    z_dim: int = 200
    head_width: int = 4096
    g_width: int = 64
    d_width: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 2.5e-5
    decay_epochs: int = 0             # the last K of --epochs decay the lr (the original's --decay_epochs)
    linear_decay: bool = False        # linear instead of exponential decay (the original's --linear_decay)
    final_lr_mult: float | None = None  # lr multiplier reached at the end; None: 0.01 exp., 0 linear
    sample_every: int = 500

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("crop", "gen_size", "z_dim", "head_width", "g_width", "d_width")


def build(cfg: Config) -> tuple[nn.Module, nn.Module, nn.Module]:
    """E (AlexNet-BN leaky + head) on crops; G (z -> image) and D(x, z) at ``gen_size`` (default: crop)."""
    side = cfg.gen_size or cfg.crop
    return (BiGANEncoder(cfg.z_dim, cfg.crop, cfg.head_width),
            UpGenerator(cfg.z_dim, side, cfg.g_width, n_up=4),
            JointDiscriminator(cfg.z_dim, side, cfg.d_width, n_down=4))


def check_options(cfg: Config, set_size: int) -> None:
    """A crop the networks support, from patches at least that large, and a valid lr decay; else one
    clear error."""
    if cfg.crop < MIN_CROP or cfg.crop % 16:
        raise click.ClickException(f"--crop {cfg.crop}: must be a multiple of 16 and at least {MIN_CROP} "
                                   f"(AlexNet collapses below that); the paper's is 112")
    if cfg.gen_size and (cfg.gen_size % 16 or not 32 <= cfg.gen_size <= cfg.crop):
        raise click.ClickException(f"--gen-size {cfg.gen_size}: must be a multiple of 16 between 32 and "
                                   f"--crop {cfg.crop} (0: the crop itself)")
    if cfg.decay_epochs > cfg.epochs:
        raise click.ClickException(f"--decay-epochs {cfg.decay_epochs}: more than --epochs {cfg.epochs}; the "
                                   f"decay takes the last K of the epochs (the original: --epochs 400 "
                                   f"--decay-epochs 200)")
    mult = cfg.final_lr_mult
    if mult is not None and not (0 <= mult <= 1 and (mult > 0 or cfg.linear_decay)):
        raise click.ClickException(f"--final-lr-mult {mult}: must be in (0, 1] for exponential decay, "
                                   f"[0, 1] with --linear-decay")
    if set_size < cfg.crop:
        raise click.ClickException(f"{cfg.shards}: patches are {set_size}x{set_size}, smaller than --crop "
                                   f"{cfg.crop}; render with `python -m augment render --size 128` "
                                   f"or lower --crop")


def lr_at(epoch: int, cfg: Config) -> float:
    """The learning rate of ``epoch`` (0-based): constant, then the released code's decay over the last
    ``decay_epochs`` epochs, log-linear to ``final_lr_mult`` x lr (reached in the last epoch) or linear
    towards it (the last epoch keeps a non-zero lr, as there)."""
    start = cfg.epochs - cfg.decay_epochs
    if cfg.decay_epochs == 0 or epoch < start:
        return cfg.lr
    final = cfg.lr * (cfg.final_lr_mult if cfg.final_lr_mult is not None else (0.0 if cfg.linear_decay else 0.01))
    if cfg.linear_decay:
        return cfg.lr + (epoch - start) / cfg.decay_epochs * (final - cfg.lr)
    t = (epoch - start + 1) / cfg.decay_epochs
    return math.exp(math.log(cfg.lr) + t * (math.log(final) - math.log(cfg.lr)))


def adam(modules: list[nn.Module], cfg: Config) -> torch.optim.Adam:
    """Adam with L2 weight decay on every parameter except BatchNorm gains (the original's
    ``--no_decay_gain``; biases are decayed, as there)."""
    gains = {id(m.weight) for mod in modules for m in mod.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None}
    params = [p for mod in modules for p in mod.parameters()]
    groups = [{"params": [p for p in params if id(p) not in gains], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if id(p) in gains], "weight_decay": 0.0}]
    return torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def to_gen_size(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Real crops at D's input side (antialiased bilinear resize when ``--gen-size`` < ``--crop``)."""
    if not cfg.gen_size or cfg.gen_size == x.shape[-1]:
        return x
    return F.interpolate(x, size=(cfg.gen_size, cfg.gen_size), mode="bilinear", antialias=True,
                         align_corners=False)


def train_step(E: nn.Module, G: nn.Module, D: nn.Module, opts: dict[str, torch.optim.Optimizer],
               real: torch.Tensor, cfg: Config, run: Run, noise: torch.Generator) -> dict[str, torch.Tensor]:
    """One D update, then one joint E + G update against the updated D (non-saturating loss)."""
    n = real.shape[0]
    z = torch.rand(n, cfg.z_dim, device=real.device, generator=noise) * 2 - 1
    x = to_gen_size(real, cfg)
    with run.autocast():
        ez, gz = E(real), G(z)
        # Real and generated pairs share one D forward (its BatchNorm sees both; one forward per backward).
        logits = D(torch.cat([x, gz.detach()]), torch.cat([ez.detach(), z])).float()
    d_loss = bce(logits[:n], 1.0) + bce(logits[n:], 0.0)
    opts["opt_d"].zero_grad(set_to_none=True)
    d_loss.backward()
    opts["opt_d"].step()
    with run.autocast():
        logits_eg = D(torch.cat([x, gz]), torch.cat([ez, z])).float()
    eg_loss = bce(logits_eg[:n], 0.0) + bce(logits_eg[n:], 1.0)
    opts["opt_eg"].zero_grad(set_to_none=True)
    eg_loss.backward()
    opts["opt_eg"].step()
    return {"d_loss": d_loss.detach(), "eg_loss": eg_loss.detach(),
            "d_acc_real": (logits[:n] > 0).float().mean(), "d_acc_fake": (logits[n:] < 0).float().mean()}


@torch.inference_mode()
def evaluate(E: nn.Module, G: nn.Module, D: nn.Module, real: torch.Tensor, fixed_z: torch.Tensor, run: Run,
             tag: str) -> dict[str, Any]:
    """D accuracies and reconstruction error on ``real`` (eval mode); writes samples + reconstructions."""
    e, g, d = unwrap(E), unwrap(G), unwrap(D)
    nets = (e, g, d)
    for m in nets:
        m.eval()
    x = to_gen_size(real, run.cfg).float()
    try:
        ez, fake = e(real), g(fixed_z).float()
        recon = g(ez).float()
        z = fixed_z[:real.shape[0]]
        logit_real, logit_fake = d(x, ez).float(), d(fake[:real.shape[0]], z).float()
    finally:
        for m in nets:
            m.train()
    out = {"eval_d_acc_real": (logit_real > 0).float().mean().item(),
           "eval_d_acc_fake": (logit_fake < 0).float().mean().item(),
           "eval_recon_mse": round(F.mse_loss(recon, x).item(), 6)}
    if run.dist.is_main:
        out["sheet"] = save_grid(fake, f"{run.cfg.out}/samples/{tag}.png", nrow=8)
        out["recon_sheet"] = save_grid(pair_grid(x[:RECON], recon[:RECON]),
                                       f"{run.cfg.out}/samples/{tag}-recon.png", nrow=8)
    return out


def train_one_epoch(run: Run, E: nn.Module, G: nn.Module, D: nn.Module,
                    opts: dict[str, torch.optim.Optimizer], loader, epoch: int, skip: int,
                    cfg: Config, fixed_z: torch.Tensor,
                    noise: torch.Generator) -> dict[str, Any]:
    """Steps on batches ``skip``.. of ``epoch``; returns mean stats, ``batches_done`` (from the epoch's
    start, fewer than the epoch's when ``--max-steps`` or ``--time-budget`` stopped it), the last batch."""
    epoch_meter, log_meter, real, done = Meter(), Meter(), None, skip
    lr = lr_at(epoch, cfg)  # a pure function of the epoch, so a resumed run needs no scheduler state
    for opt in opts.values():
        for group in opt.param_groups:
            group["lr"] = lr
    batches = loader.epoch(epoch, skip)
    for images, _ in run.progress(batches, len(batches), f"{METHOD} epoch {epoch}"):
        real = prepare(images, run.device)
        stats = train_step(E, G, D, opts, real, cfg, run, noise)
        done += 1
        loss_d, loss_eg = torch.stack([stats["d_loss"], stats["eg_loss"]]).tolist()
        run.check_finite(loss_d, "discriminator loss")
        run.check_finite(loss_eg, "encoder/generator loss")
        epoch_meter.add(stats)
        log_meter.add(stats)
        stopped = run.tick()
        if run.step % cfg.log_every == 0:
            run.log({"event": "train", **log_meter.mean(), "train_seconds": round(run.budget.spent, 1)})
            log_meter = Meter()
        if cfg.sample_every and run.step % cfg.sample_every == 0:
            evaluate(E, G, D, real, fixed_z, run, f"step{run.step:07d}")
        if stopped:
            break
    return {**epoch_meter.mean(), "lr": lr, "batches_done": done, "real": real}


def main(cfg: Config) -> dict[str, Any]:
    """Train BiGAN on a shard set; returns the last epoch's summary (also in OUT/log.jsonl)."""
    if not cfg.shards:
        raise click.ClickException("--shards is required: an S = 128 set, e.g. `python -m augment render "
                                   "--image A --size 128`")
    manifest = read_manifest(cfg.shards)
    check_options(cfg, manifest.size)  # before Run, so a wrong set leaves no run folder behind
    run = Run(cfg, METHOD)
    cfg = run.cfg
    check_options(cfg, manifest.size)  # again: on --resume the checkpoint's --crop wins
    run.log({"event": "data", "set_id": manifest.id, "count": manifest.count, "size": manifest.size,
             "sources": manifest.sources})
    loader = make_loader(manifest, batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed,
                         transform=random_crop_flip(cfg.crop), rank=run.dist.rank,
                         world_size=run.dist.world_size, pin_memory=run.device.type == "cuda")
    E, G, D = (run.wrap(m) for m in build(cfg))
    opts = {"opt_d": adam([D], cfg), "opt_eg": adam([E, G], cfg)}
    objects = {"encoder": E, "generator": G, "discriminator": D, **opts}
    state = run.restore(objects)
    fixed_z = fixed_noise(SHEET, cfg.z_dim, cfg.seed, "uniform").to(run.device)
    noise = training_noise(run, cfg.seed, state)
    return run_gan_epochs(
        run, loader, objects, unwrap(E).encoder, state, manifest.id, noise,
        train_epoch=lambda epoch, skip: train_one_epoch(run, E, G, D, opts, loader, epoch, skip, cfg, fixed_z,
                                                        noise),
        evaluate=lambda real, tag: evaluate(E, G, D, real, fixed_z, run, tag))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@common_options(batch_size=128, epochs=100)
@click.option("--crop", default=112, show_default=True, type=click.IntRange(1),
              help="Native random crop (+ h-flip) and the generator's output size; multiple of 16, >= 64.")
@click.option("--gen-size", default=0, show_default=True, type=click.IntRange(0),
              help="Side of G's output and D's input (real crops resized to it); 0: the crop. The original's "
                   "high-res encoder run used 64 with crop 112.")
@click.option("--z-dim", default=200, show_default=True, type=click.IntRange(1),
              help="Latent size; z is uniform in [-1, 1].")
@click.option("--head-width", default=4096, show_default=True, type=click.IntRange(1),
              help="Width of the encoder's two fully connected layers before the linear map to z.")
@click.option("--g-width", default=64, show_default=True, type=click.IntRange(1),
              help="Generator width (channels of its last hidden layer).")
@click.option("--d-width", default=64, show_default=True, type=click.IntRange(1),
              help="Discriminator width (channels of its first conv).")
@click.option("--lr", default=2e-4, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--beta1", default=0.5, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--beta2", default=0.999, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--weight-decay", default=2.5e-5, show_default=True, type=click.FloatRange(0))
@click.option("--decay-epochs", default=0, show_default=True, type=click.IntRange(0),
              help="Decay the lr over the last K of --epochs (released code: --epochs 400 --decay-epochs 200); "
                   "0: constant lr.")
@click.option("--linear-decay", is_flag=True, help="Decay linearly (default: exponentially, as released).")
@click.option("--final-lr-mult", default=None, type=float,
              help="lr multiplier at the end of the decay  [default: 0.01, or 0 with --linear-decay]")
@click.option("--sample-every", default=500, show_default=True, type=click.IntRange(0),
              help="Write sample and reconstruction sheets every K steps (0: only at epoch ends).")
@click.option("--log-every", default=20, show_default=True, type=click.IntRange(1),
              help="Log averaged losses and D accuracies every K steps.")
def cli(**kwargs) -> None:
    """Train BiGAN (AlexNet-BN leaky encoder, joint D(x, z)) on a shard set."""
    cli_run(main, Config(**kwargs))


if __name__ == "__main__":
    cli()
