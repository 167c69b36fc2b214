"""MonoGAN: a WGAN-GP (Gulrajani et al., 2017) on the 32x32 patches of one image (the paper's section 4.2).

``python -m train.monogan --shards SET --out DIR`` trains a DCGAN-style generator against a critic whose
body is the paper's small encoder (conv1..conv4, what the probes read). The set's patches are used as
they are (no native augmentation); a set of another size is refused with the ``--size`` to render.

One step = one generator update, preceded by ``--n-critic`` critic updates, each on a fresh real batch
(the reference's counting). ``--time-budget`` stops training cleanly, with a checkpoint, once that many
training seconds (summed over resumes) are spent. Choices and sources: docs/gans.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import click
import torch
from torch import nn

from augment.manifest import read_manifest
from train.common_cli import cli_run
from train.data import make_loader, prepare
from train.engine import CommonConfig, Run, common_options, unwrap
from train.gan_models import (CRITIC_NORMS, Critic, Meter, UpGenerator, fixed_noise,
                              interpolate, penalty_terms, run_gan_epochs, save_grid, training_noise)

METHOD = "monogan"
IMAGE_SIZE = 32
SHEET = 64  # samples per PNG sheet (8 x 8)


@dataclass(frozen=True)
class Config(CommonConfig):
    batch_size: int = 64
    epochs: int = 100
    amp: bool = False  # fp32 by default: the penalty's double backward in bf16 is untested
    z_dim: int = 128
    g_width: int = 64
    critic_norm: str = "none"
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.9
    n_critic: int = 5
    gp_weight: float = 10.0
    sample_every: int = 500

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("z_dim", "g_width", "critic_norm")


def build(cfg: Config) -> tuple[nn.Module, nn.Module]:
    """The generator (z -> 3 x 32 x 32) and the critic (small encoder + linear)."""
    return (UpGenerator(cfg.z_dim, IMAGE_SIZE, cfg.g_width, n_up=3),
            Critic(cfg.critic_norm, IMAGE_SIZE))


def critic_step(G: nn.Module, D: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, cfg: Config,
                run: Run, noise: torch.Generator) -> dict[str, torch.Tensor]:
    """One critic update: -(D(real) - D(fake)) + gp_weight * mean per-sample penalty."""
    n = real.shape[0]
    z = torch.randn(n, cfg.z_dim, device=real.device, generator=noise)
    with torch.no_grad(), run.autocast():
        fake = G(z).float()
    x_hat = interpolate(real, fake, torch.rand(n, device=real.device, generator=noise))
    with run.autocast():
        s_real, s_fake = D(torch.cat([real, fake])).float().split(n)
        # A separate forward for the interpolates: the double backward then runs on n samples, not 3n.
        s_hat = D(x_hat).float()
    gp = penalty_terms(s_hat, x_hat).mean()
    wasserstein = s_real.mean() - s_fake.mean()
    loss = -wasserstein + cfg.gp_weight * gp
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"critic_loss": loss.detach(), "wasserstein": wasserstein.detach(), "gp": gp.detach()}


def generator_step(G: nn.Module, D: nn.Module, opt: torch.optim.Optimizer, n: int, cfg: Config,
                   run: Run, noise: torch.Generator) -> dict[str, torch.Tensor]:
    """One generator update: minimise -D(G(z)). The critic's gradients are cleared by its next step."""
    z = torch.randn(n, cfg.z_dim, device=run.device, generator=noise)
    with run.autocast():
        loss = -D(G(z)).float().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"gen_loss": loss.detach()}


@torch.inference_mode()
def evaluate(G: nn.Module, D: nn.Module, real: torch.Tensor, fixed_z: torch.Tensor, run: Run,
             tag: str) -> dict[str, Any]:
    """Wasserstein estimate on ``real`` vs samples of the fixed codes; writes OUT/samples/<tag>.png."""
    g, d = unwrap(G), unwrap(D)
    g.eval()
    try:
        fake = g(fixed_z).float()
        w = d(real.float()).mean() - d(fake[:real.shape[0]]).mean()
    finally:
        g.train()
    out = {"eval_wasserstein": round(w.item(), 6)}
    if run.dist.is_main:
        out["sheet"] = save_grid(fake, f"{run.cfg.out}/samples/{tag}.png", nrow=8)
    return out


def train_one_epoch(run: Run, G: nn.Module, D: nn.Module, opts: dict[str, torch.optim.Optimizer],
                    loader, epoch: int, skip: int, cfg: Config,
                    fixed_z: torch.Tensor, noise: torch.Generator) -> dict[str, Any]:
    """Critic steps on batches ``skip``.. of ``epoch``, a generator step after every ``n_critic``-th.

    Returns the epoch's mean losses, ``batches_done`` (from the epoch's start; fewer than the epoch's
    batches when ``--max-steps`` or ``--time-budget`` stopped it) and the last real batch.
    """
    epoch_meter, log_meter, real, done = Meter(), Meter(), None, skip
    batches = loader.epoch(epoch, skip)
    for i, (images, _) in enumerate(run.progress(batches, len(batches), f"{METHOD} epoch {epoch}"), skip):
        real = prepare(images, run.device)
        stats = critic_step(G, D, opts["opt_d"], real, cfg, run, noise)
        done, stop = i + 1, False
        if done % cfg.n_critic == 0:
            stats |= generator_step(G, D, opts["opt_g"], real.shape[0], cfg, run, noise)
            loss_c, loss_g = torch.stack([stats["critic_loss"], stats["gen_loss"]]).tolist()
            run.check_finite(loss_c, "critic loss")
            run.check_finite(loss_g, "generator loss")
            epoch_meter.add(stats)
            log_meter.add(stats)
            stop = run.tick()
            if run.step % cfg.log_every == 0:
                run.log({"event": "train", **log_meter.mean(), "train_seconds": round(run.budget.spent, 1)})
                log_meter = Meter()
            if cfg.sample_every and run.step % cfg.sample_every == 0:
                evaluate(G, D, real, fixed_z, run, f"step{run.step:07d}")
        # The budget is checked after every critic step: a generator cycle can take long on a CPU.
        if stop or run.done:
            break
    return {**epoch_meter.mean(), "batches_done": done, "real": real}


def main(cfg: Config) -> dict[str, Any]:
    """Train MonoGAN on a 32x32 shard set; returns the last epoch's summary (also in OUT/log.jsonl)."""
    if not cfg.shards:
        raise click.ClickException("--shards is required: a 32x32 set, e.g. `python -m augment render "
                                   "--preset cifar --image B`")
    manifest = read_manifest(cfg.shards)  # before Run, so a wrong set leaves no run folder behind
    run = Run(cfg, METHOD)
    cfg = run.cfg
    run.log({"event": "data", "set_id": manifest.id, "count": manifest.count, "size": manifest.size,
             "sources": manifest.sources})
    loader = make_loader(manifest, batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed,
                         rank=run.dist.rank, world_size=run.dist.world_size, sizes=(IMAGE_SIZE,),
                         pin_memory=run.device.type == "cuda")
    G, D = (run.wrap(m) for m in build(cfg))
    opts = {"opt_g": torch.optim.Adam(G.parameters(), cfg.lr, betas=(cfg.beta1, cfg.beta2)),
            "opt_d": torch.optim.Adam(D.parameters(), cfg.lr, betas=(cfg.beta1, cfg.beta2))}
    objects = {"generator": G, "critic": D, **opts}
    state = run.restore(objects)
    fixed_z = fixed_noise(SHEET, cfg.z_dim, cfg.seed, "normal").to(run.device)
    noise = training_noise(run, cfg.seed, state)
    return run_gan_epochs(
        run, loader, objects, unwrap(D).encoder, state, manifest.id, noise,
        train_epoch=lambda epoch, skip: train_one_epoch(run, G, D, opts, loader, epoch, skip, cfg, fixed_z, noise),
        evaluate=lambda real, tag: evaluate(G, D, real, fixed_z, run, tag))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@common_options(batch_size=64, epochs=100, amp=False)
@click.option("--z-dim", default=128, show_default=True, type=click.IntRange(1), help="Gaussian latent size.")
@click.option("--g-width", default=64, show_default=True, type=click.IntRange(1),
              help="Generator width (channels of its last hidden layer; WGAN-GP's reference: 128).")
@click.option("--critic-norm", default="none", show_default=True, type=click.Choice(CRITIC_NORMS),
              help="Per-sample normalisation in the critic (BatchNorm would break the per-sample penalty).")
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--beta1", default=0.5, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--beta2", default=0.9, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--n-critic", default=5, show_default=True, type=click.IntRange(1),
              help="Critic updates per generator update.")
@click.option("--gp-weight", default=10.0, show_default=True, type=click.FloatRange(0))
@click.option("--sample-every", default=500, show_default=True, type=click.IntRange(0),
              help="Write OUT/samples/stepNNNNNNN.png every K generator steps (0: only at epoch ends).")
@click.option("--log-every", default=20, show_default=True, type=click.IntRange(1),
              help="Log averaged losses every K generator steps.")
def cli(**kwargs) -> None:
    """Train MonoGAN (WGAN-GP, small-encoder critic) on a 32x32 shard set."""
    cli_run(main, Config(**kwargs))


if __name__ == "__main__":
    cli()
