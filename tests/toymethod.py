"""A toy method for the loop's tests: a linear map fitted to a fixed target on tensors in memory.

Small enough that a step takes microseconds, and complete enough to exercise every part of the loop
(optimiser state, extra state, a hook per epoch). ``TOY_PARK_AT`` / ``TOY_PARK_MARKER`` park a process at
a given step (for SIGKILL tests); ``--nan-at`` makes a step's loss NaN; ``--sleep`` slows steps (budget).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from train.config import CommonConfig, command, option
from train.loader.memory import MemoryLoader
from train.loop import Method, echo_stats, fit
from train.models import Encoder, EncoderSpec
from train.run import Run


@dataclass(frozen=True)
class Config(CommonConfig):
    out: str = "runs/toy"
    batch_size: int = 4
    epochs: int = 2
    count: int = option(32, "Samples in memory.", lo=1)
    lr: float = option(0.005, "SGD learning rate.", lo=0, lo_open=True)
    nan_at: int = option(0, "Make the loss of this step (1-based) NaN (0: never).", lo=0)
    sleep: float = option(0.0, "Seconds each step sleeps.", lo=0)


class Toy(Method):
    name, Config, needs = "toy", Config, ()

    def build(self, run: Run) -> dict:
        g = torch.Generator().manual_seed(1234)
        images = (torch.rand(self.cfg.count, 3, 8, 8, generator=g) * 255).to(torch.uint8)
        self.loader = MemoryLoader(images, self.cfg.batch_size, self.cfg.seed, run.dist.rank, run.dist.world_size)
        enc = Encoder(EncoderSpec(arch="small"))
        self.model = run.wrap(nn.Sequential(enc, nn.Flatten(), nn.Linear(256, 1)))   # 8 px -> 256 x 1 x 1
        self.encoder = enc
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=0.9)
        self.epochs_begun = 0
        return {"model": self.model, "optimizer": self.opt}

    def begin_epoch(self, run: Run, epoch: int, skip: int) -> None:
        self.model.train()
        self.epochs_begun += 1

    def step(self, run: Run, batch) -> dict:
        park = int(os.environ.get("TOY_PARK_AT", "0"))
        if park and run.step + 1 == park:
            open(os.environ["TOY_PARK_MARKER"], "w").close()
            time.sleep(600)
        time.sleep(self.cfg.sleep)
        x = batch[0].float() / 255
        # Dropout-free but random: a fresh noise draw per step from the global RNG, which resume restores.
        target = x.mean((1, 2, 3)) + 0.01 * torch.randn(len(x))
        loss = ((self.model(x).squeeze(1) - target) ** 2).mean()
        if self.cfg.nan_at and run.step + 1 == self.cfg.nan_at:
            loss = loss * float("nan")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def apply_changes(self, objects: dict, changes: dict) -> set[str]:
        # The test knobs are read at every step, so a resume applies them as given.
        return super().apply_changes(objects, changes) | ({"nan_at", "sleep"} & set(changes))

    def extra_state(self) -> dict:
        return {"epochs_begun": self.epochs_begun}

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]


cli = command(Config, lambda cfg: echo_stats(fit(Toy(cfg))), "Train the toy method.")

if __name__ == "__main__":
    cli()
