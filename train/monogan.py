"""MonoGAN: a WGAN-GP (Gulrajani et al., 2017) on the 32x32 patches of one image (the paper's section 4.2).

``python -m train.monogan --shards SET --out DIR`` trains a DCGAN-style generator against a critic whose
body is the paper's small encoder (conv1..conv4, what the probes read). The set's patches are used as
they are (no native augmentation); a set of another size is refused with the ``--size`` to render.

One step = one generator update, preceded by ``--n-critic`` critic updates, each on a fresh real batch
(the reference's counting): ``step`` returns None for the critic-only batches. Choices and sources:
docs/gans.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import click
import torch

from train.config import CommonConfig, command, option
from train.gan_nets import (CRITIC_NORMS, Critic, NoiseState, UpGenerator, fixed_noise, interpolate, penalty_terms,
                            save_grid, training_noise)
from train.loader import make_loader, prepare
from train.loop import Method, echo_stats, fit
from train.run import Run, unwrap

IMAGE_SIZE = 32
SHEET = 64  # samples per PNG sheet (8 x 8)


@dataclass(frozen=True)
class Config(CommonConfig):
    out: str = "runs/monogan"
    batch_size: int = 64
    epochs: int = 100
    # fp32 by default: bf16 (--amp on) holds on the CPU (docs/benchmarks.md, precision), not yet measured on CUDA
    amp: str = "off"
    z_dim: int = option(128, "Gaussian latent size.", lo=1)
    g_width: int = option(64, "Generator width (channels of its last hidden layer; WGAN-GP's reference: 128).", lo=1)
    critic_norm: str = option("none", "Per-sample normalisation in the critic (BatchNorm would break the "
                              "per-sample penalty).", choices=CRITIC_NORMS)
    lr: float = option(1e-4, "Adam learning rate.", lo=0, lo_open=True)
    beta1: float = option(0.5, "Adam beta1.", lo=0, hi=1, hi_open=True)
    beta2: float = option(0.9, "Adam beta2.", lo=0, hi=1, hi_open=True)
    n_critic: int = option(5, "Critic updates per generator update.", lo=1)
    gp_weight: float = option(10.0, "Weight of the gradient penalty.", lo=0)
    sample_every: int = option(500, "Write OUT/samples/stepNNNNNNN.png every K generator steps (0: only at "
                               "epoch ends).", lo=0)

    variant: str = option("paper", "Sets --g-width at once (docs/variants.md); explicit options win.",
                          choices=("paper", "released"))

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("z_dim", "g_width", "critic_norm")
    VARIANTS: ClassVar[dict] = {"released": {"g_width": 128}}


class MonoGAN(NoiseState, Method):
    name, Config, evaluate_at_stop = "monogan", Config, True

    def check(self) -> None:
        super().check()
        m = self.manifest()  # before Run, so a wrong set leaves no run folder behind
        per_epoch = m.count // self.cfg.batch_size
        if per_epoch < 1:
            return  # the loader names this case
        if per_epoch < self.cfg.n_critic:   # the critic-step cycle restarts with every epoch
            raise click.ClickException(f"--n-critic {self.cfg.n_critic}: an epoch has only {per_epoch} batches, so no "
                                       f"generator step would be made; lower --n-critic or --batch-size, or render "
                                       f"a larger set")

    def build(self, run: Run) -> dict:
        cfg = self.cfg
        self.loader = make_loader(self.manifest(), batch_size=cfg.batch_size, workers=cfg.workers,
                                  seed=cfg.seed, rank=run.dist.rank, world_size=run.dist.world_size,
                                  sizes=(IMAGE_SIZE,), pin_memory=run.device.type == "cuda",
                                  verify_stream=cfg.verify_stream)
        self.G = run.wrap(UpGenerator(cfg.z_dim, IMAGE_SIZE, cfg.g_width, n_up=3))
        self.D = run.wrap(Critic(cfg.critic_norm, IMAGE_SIZE))
        self.encoder = unwrap(self.D).encoder
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), cfg.lr, betas=betas)
        self.fixed_z = fixed_noise(SHEET, cfg.z_dim, cfg.seed, "normal").to(run.device)
        self.noise = training_noise(run.device, cfg.seed, run.dist.rank)
        self.batches, self.real = 0, None
        return {"generator": self.G, "critic": self.D, "opt_g": self.opt_g, "opt_d": self.opt_d}

    def begin_epoch(self, run: Run, epoch: int, skip: int) -> None:
        self.batches = skip   # the critic-step cycle restarts with each epoch, as the loader's batches do

    def step(self, run: Run, batch) -> dict[str, torch.Tensor] | None:
        """A critic update on this batch; after every ``n_critic``-th, a generator update too."""
        self.real = real = prepare(batch[0], run.device)
        stats = self.critic_step(run, real)
        self.batches += 1
        if self.batches % self.cfg.n_critic:
            return None
        return stats | self.generator_step(run, real.shape[0])

    def critic_step(self, run: Run, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """-(D(real) - D(fake)) + gp_weight * mean per-sample penalty."""
        cfg, n = self.cfg, real.shape[0]
        z = torch.randn(n, cfg.z_dim, device=real.device, generator=self.noise)
        with torch.no_grad(), run.autocast():
            fake = self.G(z).float()
        x_hat = interpolate(real, fake, torch.rand(n, device=real.device, generator=self.noise))
        with run.autocast():
            s_real, s_fake = self.D(torch.cat([real, fake])).float().split(n)
            # A separate forward for the interpolates: the double backward then runs on n samples, not 3n.
            s_hat = self.D(x_hat).float()
        gp = penalty_terms(s_hat, x_hat).mean()
        wasserstein = s_real.mean() - s_fake.mean()
        loss = -wasserstein + cfg.gp_weight * gp
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return {"critic_loss": loss.detach(), "wasserstein": wasserstein.detach(), "gp": gp.detach()}

    def generator_step(self, run: Run, n: int) -> dict[str, torch.Tensor]:
        """Minimise -D(G(z)). The critic's gradients are cleared by its next step."""
        z = torch.randn(n, self.cfg.z_dim, device=run.device, generator=self.noise)
        with run.autocast():
            loss = -self.D(self.G(z)).float().mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return {"gen_loss": loss.detach()}

    def after_step(self, run: Run) -> None:
        if self.cfg.sample_every and run.step % self.cfg.sample_every == 0:
            self.evaluate(run)

    @torch.inference_mode()
    def evaluate(self, run: Run) -> dict[str, Any]:
        """Wasserstein estimate on the last real batch vs samples of the fixed codes; writes a sheet."""
        if self.real is None:   # only when a resume skipped a whole epoch
            return {}
        g, d = unwrap(self.G), unwrap(self.D)
        g.eval()
        try:
            fake = g(self.fixed_z).float()
            w = d(self.real.float()).mean() - d(fake[:self.real.shape[0]]).mean()
        finally:
            g.train()
        out = {"wasserstein": round(w.item(), 6)}
        if run.dist.is_main:
            out["sheet"] = save_grid(fake, f"{run.cfg.out}/samples/step{run.step:07d}.png", nrow=8)
        return out

    def lr(self) -> float:
        return self.cfg.lr


def main(cfg: Config) -> dict[str, Any]:
    """Train MonoGAN on a 32x32 shard set; returns the last epoch's summary (also in OUT/log.jsonl)."""
    return fit(MonoGAN(cfg))


cli = command(Config, lambda cfg: echo_stats(main(cfg)),
              "Train MonoGAN (WGAN-GP, small-encoder critic) on a 32x32 shard set.")

if __name__ == "__main__":
    cli()
