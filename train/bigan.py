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

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import click
import torch
import torch.nn.functional as F
from torch import nn

from train.config import CommonConfig, command, option
from train.gan_nets import (BiGANEncoder, JointDiscriminator, NoiseState, UpGenerator, fixed_noise, pair_grid,
                            save_grid, training_noise)
from train.loader import make_loader, prepare, random_crop_flip
from train.loop import Method, echo_stats, fit
from train.run import Run, unwrap

SHEET = 64     # generated samples per PNG sheet (8 x 8)
RECON = 16     # real images shown beside their reconstructions G(E(x))
MIN_CROP = 64  # AlexNet's conv/pool stack needs about 63 px to keep a 1 x 1 map after conv5's pool


@dataclass(frozen=True)
class Config(CommonConfig):
    out: str = "runs/bigan"
    batch_size: int = 128
    epochs: int = 100
    crop: int = option(112, "Native random crop (+ h-flip) and the generator's output size; multiple of 16, >= 64.",
                       lo=1)
    gen_size: int = option(0, "Side of G's output and D's input (real crops resized to it); 0: the crop. The "
                           "original's high-res encoder run used 64 with crop 112.", lo=0)
    z_dim: int = option(200, "Latent size; z is uniform in [-1, 1].", lo=1)
    head_width: int = option(4096, "Width of the encoder's two fully connected layers before the linear map to z.",
                             lo=1)
    g_width: int = option(64, "Generator width (channels of its last hidden layer).", lo=1)
    d_width: int = option(64, "Discriminator width (channels of its first conv).", lo=1)
    lr: float = option(2e-4, "Adam learning rate.", lo=0, lo_open=True)
    beta1: float = option(0.5, "Adam beta1.", lo=0, hi=1, hi_open=True)
    beta2: float = option(0.999, "Adam beta2.", lo=0, hi=1, hi_open=True)
    weight_decay: float = option(2.5e-5, "L2 weight decay (not on BatchNorm gains).", lo=0)
    decay_epochs: int = option(0, "Decay the lr over the last K of --epochs (released code: --epochs 400 "
                               "--decay-epochs 200); 0: constant lr.", lo=0)
    linear_decay: bool = option(False, "Decay linearly (default: exponentially, as released).")
    final_lr_mult: float | None = option(None, "lr multiplier at the end of the decay [default: 0.01, or 0 with "
                                         "--linear-decay].")
    sample_every: int = option(500, "Write sample and reconstruction sheets every K steps (0: only at epoch ends).",
                               lo=0)

    variant: str = option("paper", "Sets --gen-size at once (docs/variants.md); explicit options win.",
                          choices=("paper", "released"))

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("crop", "gen_size", "z_dim", "head_width", "g_width", "d_width")
    # The released high-resolution-encoder script: G and D at 64 px, the encoder on 112 crops.
    VARIANTS: ClassVar[dict] = {"released": {"gen_size": 64}}


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


class BiGAN(NoiseState, Method):
    name, Config, evaluate_at_stop = "bigan", Config, True

    def check(self) -> None:
        super().check()
        check_options(self.cfg, self.manifest().size)  # before Run: no run folder on a bad set

    def build(self, run: Run) -> dict:
        cfg = self.cfg
        self.loader = make_loader(self.manifest(), batch_size=cfg.batch_size, workers=cfg.workers,
                                  seed=cfg.seed, transform=random_crop_flip(cfg.crop), rank=run.dist.rank,
                                  world_size=run.dist.world_size, pin_memory=run.device.type == "cuda",
                                  verify_stream=cfg.verify_stream)
        self.E, self.G, self.D = (run.wrap(m) for m in build(cfg))
        self.encoder = unwrap(self.E).encoder
        self.opts = {"opt_d": adam([self.D], cfg), "opt_eg": adam([self.E, self.G], cfg)}
        self.fixed_z = fixed_noise(SHEET, cfg.z_dim, cfg.seed, "uniform").to(run.device)
        self.noise = training_noise(run.device, cfg.seed, run.dist.rank)
        self.real, self._lr = None, cfg.lr
        return {"encoder": self.E, "generator": self.G, "discriminator": self.D, **self.opts}

    def begin_epoch(self, run: Run, epoch: int, skip: int) -> None:
        self._lr = lr_at(epoch, self.cfg)  # a pure function of the epoch: a resumed run needs no scheduler state
        for opt in self.opts.values():
            for group in opt.param_groups:
                group["lr"] = self._lr

    def step(self, run: Run, batch) -> dict[str, torch.Tensor]:
        """One D update, then one joint E + G update against the updated D (non-saturating loss)."""
        cfg, opts = self.cfg, self.opts
        self.real = real = prepare(batch[0], run.device)
        n = real.shape[0]
        z = torch.rand(n, cfg.z_dim, device=real.device, generator=self.noise) * 2 - 1
        x = to_gen_size(real, cfg)
        with run.autocast():
            ez, gz = self.E(real), self.G(z)
            # Real and generated pairs share one D forward (its BatchNorm sees both; one forward per backward).
            logits = self.D(torch.cat([x, gz.detach()]), torch.cat([ez.detach(), z])).float()
        d_loss = bce(logits[:n], 1.0) + bce(logits[n:], 0.0)
        opts["opt_d"].zero_grad(set_to_none=True)
        d_loss.backward()
        opts["opt_d"].step()
        with run.autocast():
            logits_eg = self.D(torch.cat([x, gz]), torch.cat([ez, z])).float()
        eg_loss = bce(logits_eg[:n], 0.0) + bce(logits_eg[n:], 1.0)
        opts["opt_eg"].zero_grad(set_to_none=True)
        eg_loss.backward()
        opts["opt_eg"].step()
        return {"d_loss": d_loss.detach(), "eg_loss": eg_loss.detach(),
                "d_acc_real": (logits[:n] > 0).float().mean(), "d_acc_fake": (logits[n:] < 0).float().mean()}

    def after_step(self, run: Run) -> None:
        if self.cfg.sample_every and run.step % self.cfg.sample_every == 0:
            self.evaluate(run)

    @torch.inference_mode()
    def evaluate(self, run: Run) -> dict[str, Any]:
        """D accuracies and reconstruction error on the last batch (eval mode); writes samples + reconstructions."""
        if self.real is None:
            return {}
        nets = e, g, d = unwrap(self.E), unwrap(self.G), unwrap(self.D)
        for m in nets:
            m.eval()
        real = self.real
        x = to_gen_size(real, run.cfg).float()
        try:
            ez, fake = e(real), g(self.fixed_z).float()
            recon = g(ez).float()
            z = self.fixed_z[:real.shape[0]]
            logit_real, logit_fake = d(x, ez).float(), d(fake[:real.shape[0]], z).float()
        finally:
            for m in nets:
                m.train()
        out = {"d_acc_real": (logit_real > 0).float().mean().item(),
               "d_acc_fake": (logit_fake < 0).float().mean().item(),
               "recon_mse": round(F.mse_loss(recon, x).item(), 6)}
        if run.dist.is_main:
            tag = f"{run.cfg.out}/samples/step{run.step:07d}"
            out["sheet"] = save_grid(fake, f"{tag}.png", nrow=8)
            out["recon_sheet"] = save_grid(pair_grid(x[:RECON], recon[:RECON]), f"{tag}-recon.png", nrow=8)
        return out

    def lr(self) -> float:
        return self._lr


def main(cfg: Config) -> dict[str, Any]:
    """Train BiGAN on a shard set; returns the last epoch's summary (also in OUT/log.jsonl)."""
    return fit(BiGAN(cfg))


cli = command(Config, lambda cfg: echo_stats(main(cfg)),
              "Train BiGAN (AlexNet-BN leaky encoder, joint D(x, z)) on a shard set.")

if __name__ == "__main__":
    cli()
