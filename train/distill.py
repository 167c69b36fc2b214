"""Single-image distillation (The Augmented Image Prior, Asano & Saeed, ICLR 2023).

``python -m train.distill --shards SET --teacher CKPT --eval-data DATA --out DIR``: a randomly initialised
student learns, from one image's patches alone, to match a frozen teacher's softened outputs:
KL(softmax(teacher / T) || softmax(student / T)), batch mean, T = 8, on CutMixed batches (docs/distill.md).
The teacher is a checkpoint of ``train.supervised`` or ``torchvision:NAME`` (ImageNet weights from
torchvision's cache). The teacher's top-1 on ``--eval-data`` is logged first, the student's after each
epoch; the teacher's parameters are hashed before training and checked after each epoch.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
from dataclasses import dataclass
from typing import ClassVar

import click
import torch
import torch.nn.functional as F
from torch import nn

from train.checkpoint import load_checkpoint
from train.classifier import CLASSIFIER_ARCHS, DEFAULT_INPUT, build_classifier, check_label_classifier, score
from train.config import CommonConfig, command, option
from train.loader import make_loader, prepare, random_crop_flip
from train.loader.folder import DATASETS, make_folder_loader, open_splits, transforms_for
from train.loader.views import SingleView, ViewSpec
from train.loop import Method, echo_stats, fit
from train.models import EncoderSpec
from train.run import Run, memory_format, unwrap
from train.schedules import milestone_steps, planned_steps, set_lr, step_factor

# ImageNet statistics torchvision's classifiers expect; the loaders give inputs in (-1, 1).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def imagenet_view(size: int) -> ViewSpec:
    """The reference ImageNet code's student view: RandomResizedCrop(size, 0.08..1, bicubic), flip,
    ColorJitter(0.4, 0.4, 0.4, 0.4) with p 0.8, greyscale p 0.2, solarize p 0.2; no blur."""
    return ViewSpec(size, scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=0.8, grey_p=0.2, blur_p=0.0,
                    solarize_p=0.2, interpolation="bicubic")


@dataclass(frozen=True)
class Config(CommonConfig):
    out: str = "runs/distill"
    batch_size: int = 512
    epochs: int = 200
    teacher: str = option("", "Teacher: a train.supervised checkpoint (file or run folder), or torchvision:NAME.")
    eval_data: str = option("", "The teacher's labelled data (ImageFolder or CIFAR files); its eval split scores "
                            "teacher and student.")
    eval_dataset: str = option("cifar10", "Layout of --eval-data.", choices=DATASETS)
    eval_batches: int = option(0, "Evaluation batches (0: the whole split).", lo=0)
    student_arch: str = option("small", "Student encoder (+ its classifier head); the paper's: wrn16_4 "
                              "(CIFAR), resnet50 (ImageNet).", choices=CLASSIFIER_ARCHS)
    recipe: str = option("cifar", "cifar: flip, 4-px pad, random crop of the patch size; imagenet: "
                         "RandomResizedCrop(--crop, area 0.08..1, bicubic), flip, colour jitter (0.4, 0.4, 0.4, "
                         "0.4) with p 0.8, greyscale p 0.2, solarize p 0.2.", choices=("cifar", "imagenet"))
    crop: int = option(0, "Student input side; 0: the set's patch size (cifar) or 224 (imagenet).", lo=0)
    temperature: float = option(8.0, "Softmax temperature T of both networks.", lo=0, lo_open=True)
    cutmix: float = option(1.0, "CutMix: the box's area fraction is drawn from Beta(a, a) (0: no CutMix).", lo=0)
    cutmix_prob: float = option(1.0, "Fraction of batches CutMixed (the reference: every batch).", lo=0, hi=1)
    optimizer: str = option("adamw", "adamw (the ImageNet code) or adam (the CIFAR code).",
                            choices=("adamw", "adam"))
    lr: float = option(0.01, "Learning rate.", lo=0, lo_open=True)
    weight_decay: float = option(5e-4, "Weight decay (decoupled for adamw, L2 for adam).", lo=0)
    eps: float = option(1e-8, "Adam epsilon (Keras' default: 1e-7).", lo=0, lo_open=True)
    milestones: tuple[int, ...] = option((100, 150), "Epochs at which the lr is multiplied by --gamma.")
    gamma: float = option(0.5, "lr multiplier at each milestone.", lo=0, lo_open=True)

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("student_arch", "crop", "recipe")


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KLDivLoss(batchmean) between log_softmax(student / T) and softmax(teacher / T)."""
    return F.kl_div(F.log_softmax(student / temperature, 1), F.softmax(teacher / temperature, 1),
                    reduction="batchmean")


def cutmix_box(h: int, w: int, lam: float, gen: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """A box (y0, y1, x0, x1) of area about ``(1 - lam) * h * w`` at a uniform centre, clipped to the image."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = (int(v) for v in torch.randint(0, 1 << 30, (2,), generator=gen) % torch.tensor([h, w]))
    return max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)


def cutmix(x: torch.Tensor, alpha: float, gen: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """Paste a box of a shuffled copy of the batch into it (labels are not needed: the teacher labels the mix);
    returns the mixed batch and the kept area's fraction lambda."""
    # lambda from the same generator as the box, so a step's mix is a function of its seed alone
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if gen is None else _beta(alpha, g)
    y0, y1, x0, x1 = cutmix_box(x.shape[2], x.shape[3], lam, gen)
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    return out, 1.0 - (y1 - y0) * (x1 - x0) / (x.shape[2] * x.shape[3])


def _beta(alpha: float, gen: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw from ``gen`` (torch's Beta takes no generator), via numpy seeded from it."""
    import numpy as np

    return float(np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen))).beta(alpha, alpha))


def pad_crop(x: torch.Tensor, pad: int = 4, gen: torch.Generator | None = None) -> torch.Tensor:
    """The CIFAR recipe's zero-pad by ``pad`` and random crop back to size, one offset per image."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=gen)
    # one gather for the whole batch: image i's rows dy[i]..dy[i]+h and columns dx[i]..dx[i]+w
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].to(x.device)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].to(x.device)
    idx = torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None]
    return padded[idx[0], idx[1], rows, cols]


def param_hash(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (name, bytes): proof that the teacher never moved."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ImageNetInput(nn.Module):
    """A torchvision classifier fed the loaders' (-1, 1) inputs: renormalised to ImageNet statistics."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(((x + 1) / 2 - self.mean) / self.std)


def torchvision_teacher(name: str) -> nn.Module:
    """torchvision's classifier ``name`` with its default ImageNet weights, read from torch hub's cache only."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        known = ", ".join(sorted(torchvision.models.list_models(torchvision.models))[:8])
        raise click.ClickException(f"--teacher torchvision:{name}: no such torchvision classifier; try one of "
                                   f"{known}, ...") from None
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if not os.path.isfile(path):
        raise click.ClickException(f"--teacher torchvision:{name}: weights not found offline; put "
                                   f"{os.path.basename(weights.url)} (from {weights.url}) at {path}")
    net = torchvision.models.get_model(name, weights=None, num_classes=len(weights.meta["categories"]))
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return ImageNetInput(net)


def checkpoint_teacher(path: str) -> tuple[nn.Module, int]:
    """A classifier rebuilt from a checkpoint of this tool, and the input side it was trained at."""
    ck = load_checkpoint(path)
    check_label_classifier(ck, f"--teacher {path}")
    model_state = {k.removeprefix("module."): v for k, v in ck.get("state", {}).get("model", {}).items()}
    if "top.weight" not in model_state:
        raise click.ClickException(f"--teacher {path}: a {ck.get('method')!r} checkpoint without a classifier "
                                   f"head; use a train.supervised checkpoint or torchvision:NAME")
    cfg = ck.get("config", {})
    spec = EncoderSpec.from_dict(ck["encoder_spec"])
    size = cfg.get("size") or DEFAULT_INPUT.get(spec.arch, 224)
    net = build_classifier(spec, model_state["top.weight"].shape[0], size)
    net.load_state_dict(model_state)
    return net, size


def load_teacher(spec: str) -> nn.Module:
    """The frozen teacher: eval mode, no gradients."""
    net = torchvision_teacher(spec.split(":", 1)[1]) if spec.startswith("torchvision:") else checkpoint_teacher(spec)[0]
    return net.eval().requires_grad_(False)


def num_classes(net: nn.Module) -> int:
    """Outputs of a classifier's last linear layer."""
    return [m for m in net.modules() if isinstance(m, nn.Linear)][-1].out_features


def check_temperature(t: float) -> None:
    """--temperature must be a finite positive number (T divides both networks' logits)."""
    if not (math.isfinite(t) and t > 0):
        raise click.ClickException(f"--temperature {t}: must be a finite number above 0 (the reference: 8)")


class Distill(Method):
    name, Config, needs, evaluate_at_stop = "distill", Config, ("shards", "teacher", "eval_data"), True

    def _input_size(self, patch: int) -> int:
        return self.cfg.crop or (patch if self.cfg.recipe == "cifar" else 224)

    def _loaders(self, run: Run) -> None:
        cfg, m = self.cfg, self.manifest()
        size = self.size = self._input_size(m.size)
        if m.size < size:
            raise click.ClickException(f"{m.root}: patches are {m.size} pixels, smaller than the student's input "
                                       f"{size}; lower --crop or render with a larger --size")
        tf = random_crop_flip(size) if cfg.recipe == "cifar" else SingleView(imagenet_view(size))
        self.loader = make_loader(m, batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed, transform=tf,
                                  rank=run.dist.rank, world_size=run.dist.world_size,
                                  pin_memory=run.device.type == "cuda", verify_stream=cfg.verify_stream)
        splits = open_splits(cfg.eval_data, cfg.eval_dataset,
                             *transforms_for("small" if size <= 32 else "alexnet", size),
                             flags=("--eval-data", "--eval-dataset"))
        if splits.eval is None:
            raise click.ClickException(f"--eval-data {cfg.eval_data}: no val/ or test/ split to score on")
        self.classes = len(splits.classes)
        self.eval_loader = make_folder_loader(splits.eval, train=False, batch_size=cfg.batch_size,
                                              workers=cfg.workers, seed=cfg.seed, rank=run.dist.rank,
                                              world_size=run.dist.world_size, pin_memory=False)

    def build(self, run: Run) -> dict:
        cfg = self.cfg
        check_temperature(cfg.temperature)
        self.rank = run.dist.rank
        self.run = run
        # channels-last like the student: the bf16 CPU kernels are several times slower on NCHW
        self.teacher = load_teacher(cfg.teacher).to(run.device, memory_format=memory_format(cfg.channels_last))
        self._loaders(run)
        try:   # the teacher sees the student's inputs: a 224-px AlexNet cannot take 32-px patches
            with torch.no_grad():
                self.teacher(torch.zeros(1, 3, self.size, self.size, device=run.device))
        except RuntimeError as e:
            raise click.ClickException(f"--teacher {cfg.teacher}: cannot take the student's {self.size}-pixel "
                                       f"inputs ({str(e).splitlines()[0][:120]}); give --crop the teacher's input "
                                       f"side, or a teacher trained at {self.size} pixels") from None
        if num_classes(self.teacher) != self.classes:
            raise click.ClickException(f"--teacher {cfg.teacher} has {num_classes(self.teacher)} classes, "
                                       f"--eval-data {cfg.eval_data} {self.classes}; evaluate on the teacher's data")
        self.teacher_hash = param_hash(self.teacher)
        self.model = run.wrap(build_classifier(EncoderSpec(arch=cfg.student_arch), self.classes, self.size))
        self.encoder = unwrap(self.model).encoder
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.opt = opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)
        self.milestone_steps = milestone_steps(cfg.milestones, cfg.epochs,
                                               planned_steps(cfg, self.loader.batches_per_epoch))
        return {"model": self.model, "optimizer": self.opt}

    def load_extra(self, extra: dict) -> None:
        """A fresh run scores the teacher and logs it; a resumed one must have the very teacher it began with
        (its hash), and logs the score measured then rather than spending an evaluation on it again."""
        begun = extra.get("teacher_sha256")
        if begun is not None and begun != self.teacher_hash:
            raise click.ClickException(f"--teacher {self.cfg.teacher}: its parameters differ from the teacher this "
                                       f"run began with (sha256 {begun[:12]}, now {self.teacher_hash[:12]}); resume "
                                       f"with that teacher, or start a new --out")
        scores = extra.get("teacher_scores") or self._score(self.run, self.teacher)
        self.teacher_scores = {k: float(v) for k, v in scores.items()}
        self.run.log({"event": "teacher", "teacher": self.cfg.teacher, "teacher_sha256": self.teacher_hash,
                      "measured": "at the start of this run" if begun is None else "when the run began (checkpoint)",
                      **{f"teacher_{k}": v for k, v in self.teacher_scores.items()}})

    def extra_state(self) -> dict:
        return {"teacher_sha256": self.teacher_hash, "teacher_scores": self.teacher_scores}

    def begin_epoch(self, run: Run, epoch: int, skip: int) -> None:
        self.model.train()

    def augment(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """The recipe's on-device part (CIFAR's pad + crop), then CutMix, before either network sees x. Drawn
        from a generator seeded by (seed, step, rank): a resumed run repeats the same draws exactly."""
        gen = torch.Generator().manual_seed(hash((self.cfg.seed, step, self.rank)) & (2**62 - 1))
        if self.cfg.recipe == "cifar":
            x = pad_crop(x, 4, gen)
        if self.cfg.cutmix > 0 and float(torch.rand((), generator=gen)) < self.cfg.cutmix_prob:
            x = cutmix(x, self.cfg.cutmix, gen)[0]
        return x

    def step(self, run: Run, batch) -> dict:
        cfg = self.cfg
        set_lr(self.opt, cfg.lr * step_factor(run.step, self.milestone_steps, cfg.gamma))
        x = self.augment(prepare(batch[0], run.device), run.step).contiguous(
            memory_format=memory_format(cfg.channels_last))
        with torch.no_grad(), run.autocast():
            target = self.teacher(x).float()
        with run.autocast():
            logits = self.model(x).float()
        loss = kd_loss(logits, target, cfg.temperature)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach(), "agree": (logits.detach().argmax(1) == target.argmax(1)).float().mean()}

    def _score(self, run: Run, net: nn.Module) -> dict:
        batches = self.eval_loader.epoch(0)
        if self.cfg.eval_batches:
            batches = itertools.islice(batches, self.cfg.eval_batches)
        to_xy = lambda b: (prepare(b[0], run.device), b[1].to(run.device))  # noqa: E731
        return score(run, net, batches, to_xy, acc_key="top1")

    def evaluate(self, run: Run) -> dict:
        """The student's top-1 on the eval split; fails if the teacher's parameters moved."""
        if param_hash(self.teacher) != self.teacher_hash:
            raise click.ClickException(f"--teacher {self.cfg.teacher}: its parameters changed during training "
                                       f"(a bug: the teacher must stay frozen)")
        return self._score(run, self.model)


def main(cfg: Config) -> dict:
    """Distil the teacher into a fresh student as configured; returns the last epoch's statistics."""
    return fit(Distill(cfg))


cli = command(Config, lambda cfg: echo_stats(main(cfg)),
              "Distil a teacher into a random student on single-image patches (Augmented Image Prior).")

if __name__ == "__main__":
    cli()
