"""The pipelines' configs: frozen dataclasses, the only source of their defaults (the options come from them).

Budgets are in steps: every trained row trains ``--steps`` optimisation steps (0: the method's default in
``STEPS``, chosen so that each page's pipeline fits an hour on an idle 2-core CPU), and every schedule runs
over those steps (``train.schedules``). A wall-clock cap stays as a safety net only: a row it stops before
its steps is marked on the page as not comparable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import click

from train.config import option, params

# Per-method step budgets for this machine class, from rates measured on an idle 2-core Xeon (bf16, channels
# last, batch 64, one loader worker): MonoGAN 0.74 s a generator step (each after --n-critic critic batches,
# as gan_cifar.py counts them), supervised 0.094 s, RotNet 0.12 s (4 rotations a batch). Table 3 with two
# seeds then trains for about 29 minutes and probes for about 13 (docs/reproduction.md).
STEPS = {"monogan": 500, "supervised": 1500, "rotnet": 1500, "simclr": 300, "dino": 200}
# Table 1 trains nine runs of one method: a smaller budget per cell keeps the page within the hour.
ABLATION_STEPS = {"monogan": 250, "rotnet": 1000}
# --methods: the modern methods on the Image B set, on the small encoder; sizes chosen for a CPU budget
# of minutes (recorded in every run's log).
EXTRA_METHODS = {
    "simclr": ("SimCLR (Image B)", ("train.simclr", "--arch", "small")),
    "dino": ("DINO (Image B)", ("train.dino", "--arch", "small", "--local-crops", "2", "--out-dim", "4096",
                                "--hidden", "512", "--bottleneck", "128")),
}
ABLATION_METHODS = ("monogan", "rotnet")


@dataclass(frozen=True)
class PipelineConfig:
    """What every pipeline shares: its data, work folder, seeds, probes and the commands' common options."""

    UNUSED: ClassVar[tuple[str, ...]] = ()

    images: str = option("../shared/data/images", "Folder with the paper's images (animals.png = Image B, "
                         "ameyoko.jpg = Image A). Env: SOURCE_IMAGE_DIR, the one name every command reads.")
    cifar: str = option("../shared/data/cifar10-jpg.tar.gz", "CIFAR-10 JPEG tarball or ImageFolder with train/ and "
                        "test/. Env: CIFAR.")
    work: str = option("runs/repro-cpu", "Working folder, shared by the pipelines (re-running resumes; a changed "
                       "option is refused).")
    seeds: int = option(2, "Training seeds per row (the readings' yardstick; 1: no direction is claimed).", lo=1)
    seed: int = option(0, "First seed; a row's seeds are seed, seed + 1, ...", lo=0)
    probe_epochs: int = option(12, "Linear-probe epochs (the paper's 36 with --probe-epochs 36; the schedule's "
                               "milestones scale with it).", lo=1)
    probe_jobs: int = option(2, "Layers probed in parallel processes (same results, faster on 2 cores).", lo=1)
    schedule: str = option("paper", "Probe lr schedule.", choices=("paper", "released"))
    batch_size: int = option(64, "Batch size of every trained row.", lo=1)
    workers: int = option(1, "Loader workers of every command.", lo=0)
    device: str = option("cpu", "Device of every command.")

    def seed_list(self) -> list[int]:
        return [self.seed + k for k in range(self.seeds)]


@dataclass(frozen=True)
class ReproConfig(PipelineConfig):
    """Tables 3 and 1 at reduced scale (``python -m repro table3|table1``)."""

    image: str = option("B", "Source image: B (the paper's, looked up in --images) or an image file.")
    out: str = option("docs/results/table3.md", "Table 3's page (its plot beside it).")
    count: int = option(50_000, "D, the number of rendered patches.", lo=1)
    steps: int = option(0, "Step budget of every trained row (0: each method's default: "
                        + ", ".join(f"{k} {v}" for k, v in STEPS.items()) + ").", lo=0)
    train_minutes: float = option(30.0, "Safety net: a wall-clock cap per trained row (0: none); a row it stops "
                                  "before its steps is marked not comparable.", lo=0)
    monogan_steps: int = option(0, "MonoGAN's generator-step budget (0: --steps or its default).", lo=0)
    full_schedules: bool = option(False, "Supervised and RotNet train their own --epochs schedules instead of the "
                                  "step budget (the GPU reproduction).")
    ablation: bool = option(False, "Also Table 1: eight augmentation cells and a seed pair.")
    ablation_method: str = option("monogan", "The method trained on every Table 1 cell (the paper's: monogan).",
                                  choices=ABLATION_METHODS)
    ablation_steps: int = option(0, "Step budget of each Table 1 cell (0: the method's default: "
                                 + ", ".join(f"{k} {v}" for k, v in ABLATION_STEPS.items()) + ").", lo=0)
    ablation_minutes: float = option(30.0, "Safety net: a wall-clock cap per Table 1 cell (0: none).", lo=0)
    ablation_out: str = option("docs/results/ablation.md", "Table 1's page (ablation.png beside it).")
    rotnet: bool = option(True, "The RotNet rows (CIFAR-10 train, and the Image B set).")
    methods: tuple[str, ...] = option((), "Extra rows on the Image B set, comma-separated: "
                                      + ", ".join(EXTRA_METHODS) + ".")
    amp: str = option("on", "--amp of every train and probe command: on = bf16 where the CPU has it natively; "
                      "default = each command's own (fp32 on the CPU).", choices=("default", "cuda", "on", "off"))
    channels_last: bool = option(True, "Train with --channels-last.")
    finetune: bool = option(False, "Then Tables 4 and 5 and Figs. 3 and 5 from this run's checkpoints.")
    finetune_out: str = option("docs/results/finetune.md", "The Tables 4 and 5 page (figures beside it).")

    def __post_init__(self):
        if unknown := [m for m in self.methods if m not in EXTRA_METHODS]:
            raise click.BadParameter(f"{', '.join(unknown)}: not a method here; use {', '.join(EXTRA_METHODS)}",
                                     param_hint="--methods")

    def steps_for(self, method: str) -> int:
        """The step budget of a row of ``method``."""
        if method == "monogan" and self.monogan_steps:
            return self.monogan_steps
        return self.steps or STEPS[method]

    def ablation_budget(self) -> int:
        """The step budget of each Table 1 cell."""
        return self.ablation_steps or ABLATION_STEPS[self.ablation_method]


@dataclass(frozen=True)
class FinetuneConfig(PipelineConfig):
    """Tables 4 and 5 and Figs. 3 and 5 at reduced scale (``python -m repro table45``)."""

    out: str = option("docs/results/finetune.md", "Results page (figures beside it).")
    checkpoints: tuple[str, ...] = option((), "A model to take conv1-2 from, as LABEL=PATH (repeatable; one seed). "
                                          "Default: Table 3's runs in --work, every seed.", name="checkpoint")
    supervised: str = option("", "Full sup. checkpoint (one seed). Default: Table 3's.")
    random: str = option("", "Random checkpoint (one seed). Default: Table 3's.")
    retrain_steps: int = option(500, "Table 4: steps of each retraining.", lo=1)
    retrain_minutes: float = option(10.0, "Safety net: wall-clock cap per Table 4 row (0: none).", lo=0)
    scattering_minutes: float = option(20.0, "Safety net for the Scattering row (slower steps).", lo=0)
    finetune_steps: int = option(500, "Table 5: steps of each fine-tuning.", lo=1)
    finetune_minutes: float = option(10.0, "Safety net: wall-clock cap per Table 5 row (0: none).", lo=0)
    adapter_control: bool = option(True, "Table 4: a Random row with Scattering's trainable 1x1 adapter, which "
                                   "measures what the adapter alone adds.")
    spec_controls: bool = option(True, "Random / from-scratch rows with each single-image model's network.")
    figures: bool = option(True, "Fig. 3 and Fig. 5.")
    content: str = option("ameyoko.jpg", "Fig. 3 content (Image A), in --images or a path.")
    style: str = option("animals.png", "Fig. 3 style (Image B), in --images or a path.")
    style_steps: int = option(150, "Fig. 3: L-BFGS evaluations.", lo=1)
    style_size: int = option(160, "Fig. 3: image side.", lo=16)
    maximize_steps: int = option(128, "Fig. 5: activation-maximisation steps.", lo=1)
    maximize_size: int = option(64, "Fig. 5: image side.", lo=16)

    def parsed_checkpoints(self) -> list[tuple[str, str]]:
        """(label, path) of every ``--checkpoints`` entry; a malformed or repeated one is one error."""
        out = []
        for text in self.checkpoints:
            label, sep, path = text.partition("=")
            if not sep or not label.strip() or not path.strip():
                raise click.BadParameter(f"{text!r}: give LABEL=PATH, e.g. 'MonoGAN=runs/monogan/checkpoint.pt'",
                                         param_hint="--checkpoint")
            out.append((label.strip(), path.strip()))
        labels = [label for label, _ in out]
        if len(set(labels)) != len(labels):
            raise click.BadParameter(f"the label {next(l for l in labels if labels.count(l) > 1)!r} is given twice; "
                                     f"give each model its own label", param_hint="--checkpoint")
        return out


@dataclass(frozen=True)
class DistillConfig(PipelineConfig):
    """Single-image distillation at reduced scale (``python -m repro distill``): students distilled from one
    teacher on four sources, for one step budget each."""

    UNUSED: ClassVar[tuple[str, ...]] = ("probe_epochs", "probe_jobs", "schedule")

    image: str = option("B", "The main single image: B (the paper's, looked up in --images) or an image file.")
    second_image: str = option("A", "A second single image: A (looked up in --images) or an image file.")
    out: str = option("docs/results/distill.md", "The page (distill.png beside it).")
    count: int = option(50_000, "Patches of each rendered source (CIFAR-10 is packed whole: its 50,000 images).",
                        lo=1)
    steps: int = option(1500, "Step budget of every student.", lo=1)
    stages: int = option(4, "Evaluations along each student's run (the curve's points): it stops at k / stages of "
                         "its budget and resumes (the same run as an uninterrupted one).", lo=1)
    lr: float = option(0.001, "Students' Adam learning rate (the reference CIFAR code's: Keras' defaults).",
                       lo=0, lo_open=True)
    teacher_steps: int = option(0, "The teacher: Table 3's Fully supervised run (seed --seed) in --work, trained "
                                "there when absent, for this many steps (0: Table 3's budget, "
                                f"{STEPS['supervised']}).", lo=0)
    noise_seed: int = option(0, "Seed of the noise image (the lower reference).", lo=0)
    noise_size: tuple[int, ...] = option((600, 225), "Noise image width,height (Image B's size).")
    student_minutes: float = option(20.0, "Safety net: a wall-clock cap per student (0: none); a student it stops "
                                    "before its steps is marked not comparable.", lo=0)
    amp: str = option("on", "--amp of every command (as Table 3's).", choices=("default", "cuda", "on", "off"))
    channels_last: bool = option(True, "Train with --channels-last (as Table 3).")

    def __post_init__(self):
        if len(self.noise_size) != 2 or min(self.noise_size) < 1:
            raise click.BadParameter(f"{self.noise_size}: give WIDTH,HEIGHT, e.g. 600,225", param_hint="--noise-size")
        if self.stages > self.steps:
            raise click.BadParameter(f"{self.stages} stages of a {self.steps}-step budget: give at most one stage "
                                     f"per step", param_hint="--stages")


ENV = {"images": "SOURCE_IMAGE_DIR", "cifar": "CIFAR"}


def options(cls: type) -> list[click.Option]:
    """The click options of a pipeline config (``--images`` and ``--cifar`` also read SOURCE_IMAGE_DIR and CIFAR)."""
    out = params(cls)
    for i, p in enumerate(out):
        if p.name in ENV:
            p.envvar = ENV[p.name]
        if p.name == "checkpoints":     # repeatable: a label may hold a comma
            out[i] = click.Option(["--checkpoint", "checkpoints"], multiple=True, metavar="LABEL=PATH", help=p.help)
    return out
