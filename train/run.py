"""A training run: output folder, log, device, process group, time budget, checkpoints and resume.

``Run`` owns everything a method must not know about:

* ``out/log.jsonl``: first line ``{"git": ..., "config": {sorted}, ...}``, then one JSON object per event;
* ``out/checkpoint.pt`` (``train.checkpoint``): written atomically with a payload digest;
* ``--resume``: ``run.restore(objects)``; the checkpoint's architecture fields win;
* device choice, DDP under ``torchrun`` (env ``WORLD_SIZE``), bf16 autocast (``--amp``: on CUDA, and on a
  CPU with native bf16 when asked), channels-last networks (``--channels-last``), and the fail-fast check
  that every statistic of a step is finite (the last good checkpoint stays intact).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable

import click
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from augment.files import TMP_MARK, describe_os_error, remove_stale_temps
from augment.lock import die_with_parent, folder_lock
from augment.provenance import git_revision, library_versions
from augment.seeds import mix
from train.checkpoint import CHECKPOINT, REQUIRED, checkpoint_dict, load_checkpoint, save_checkpoint, state_of
from train.config import AMP_CHOICES, CommonConfig
from train.loader.worker import mark_trainer

LOG = "log.jsonl"
# What a run keeps in its --out (the GANs add samples/): a folder holding none of them holds no run.
LOCK_DIR = ".train"     # holds the lock of the one trainer writing the folder
RUN_NAMES = frozenset({CHECKPOINT, LOG, LOCK_DIR, "samples"})
# /proc/cpuinfo flags of x86 CPUs that compute bf16 natively; elsewhere bf16 autocast is emulated and
# slower than fp32, so it is not used.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable or unknown device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise click.ClickException(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise click.ClickException(f"--device {name}: no CUDA device is visible here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise click.ClickException(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return dev


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """Which of ``CPU_BF16_FLAGS`` this CPU reports (empty off Linux/x86 or without native bf16)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ()
    return tuple(fl for fl in CPU_BF16_FLAGS if fl in flags)


def amp_dtype(device: torch.device, amp: str, cpuinfo: str = "/proc/cpuinfo") -> tuple[torch.dtype | None, str]:
    """The autocast dtype for ``--amp`` on ``device`` (None: fp32) and, when fp32 is used although bf16 was
    asked for, the one line that says so (else "").

    ``cuda``: bf16 on CUDA only, so CPU runs keep their fp32 numerics; ``on``: also on a CPU with native
    bf16 (``CPU_BF16_FLAGS``); ``off``: fp32 everywhere.
    """
    if amp not in AMP_CHOICES:
        raise click.ClickException(f"--amp {amp}: use one of {', '.join(AMP_CHOICES)}")
    if amp == "off" or (amp == "cuda" and device.type != "cuda"):
        return None, ""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16, ""
        return None, (f"--amp {amp}: {torch.cuda.get_device_name(device)} has no native bf16, so this run "
                      f"uses fp32")
    if cpu_bf16_flags(cpuinfo):
        return torch.bfloat16, ""
    return None, (f"--amp {amp}: this CPU has no native bf16 ({' or '.join(CPU_BF16_FLAGS)}), so this run "
                  f"uses fp32")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op context for fp32 (``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if "TORCHELASTIC_RUN_ID" in os.environ:
        # a rank must not outlive its launcher: killed alone, torchrun leaves its ranks training as orphans
        # that hold the run's lock and write into OUT for nobody
        die_with_parent(None)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def all_reduce_mean(value: float, d: Dist, device: torch.device) -> float:
    """Mean of a scalar over ranks (identity without DDP)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / d.world_size


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


# --------------------------------------------------------------------------- RNG


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed the global generators of Python, numpy and torch from (seed, rank)."""
    s = mix(seed, rank, 0x61081)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def rng_state() -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])



class NonFiniteLoss(click.ClickException):
    """Raised when a statistic of a step is NaN or infinite; the last good checkpoint is left untouched."""


@dataclass
class ResumeState:
    epoch: int = 0          # epochs completed
    step: int = 0           # optimisation steps completed
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def given_on_command_line() -> set[str]:
    """The options the running click command got explicitly (not defaults); empty outside a command."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return set()
    return {k for k in ctx.params if ctx.get_parameter_source(k) not in
            (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}


def merge_arch(cfg: CommonConfig, saved: dict[str, Any], given: set[str] | None = None,
               where: str = "the checkpoint") -> tuple[CommonConfig, dict[str, tuple]]:
    """Return ``cfg`` with its ``ARCH_FIELDS`` taken from a checkpoint's saved config, and what changed.

    A model option given explicitly (``given``) with another value than the checkpoint's is refused: the
    run would otherwise go on silently with the checkpoint's model, not the one asked for.
    """
    changed = {k: (getattr(cfg, k), saved[k]) for k in cfg.ARCH_FIELDS
               if k in saved and saved[k] != getattr(cfg, k)}
    asked = {k: v for k, v in changed.items() if k in (given or set())}
    if asked:
        said = ", ".join(f"--{k.replace('_', '-')} {a} (it was trained with {b})" for k, (a, b) in asked.items())
        back = " ".join(f"--{k.replace('_', '-')} {b}" for k, (a, b) in asked.items())
        raise click.ClickException(f"--resume: {said}: the model cannot change in the middle of a run; drop "
                                   f"the option or give {back} to continue {where}, or start a new run in "
                                   f"another --out")
    return dataclasses.replace(cfg, **{k: v[1] for k, v in changed.items()}), changed


class TimeBudget:
    """Training seconds spent, carried across resumes; ``exceeded`` once ``seconds`` (> 0) are used."""

    def __init__(self, seconds: float, spent: float = 0.0):
        self.seconds, self.before, self.t0 = seconds, spent, time.monotonic()
        self._reached = False

    @property
    def spent(self) -> float:
        return self.before + time.monotonic() - self.t0

    @property
    def exceeded(self) -> bool:
        return self.seconds > 0 and self.spent >= self.seconds

    def reached(self, d: Dist, device: torch.device) -> bool:
        """``exceeded`` agreed by all ranks (any rank over budget stops all), so DDP ranks stop together."""
        if self.seconds <= 0:
            return False
        if not self._reached:
            self._reached = all_reduce_mean(float(self.exceeded), d, device) > 0
        return self._reached


class Run:
    """One training run: output folder, log, device, process group, step counter and checkpoints."""

    def __init__(self, cfg: CommonConfig, method: str):
        self.method = method
        try:
            device = resolve_device(cfg.device)
        except click.ClickException:
            # Under torchrun every rank finds the same fault: rank 0 says it, the others only fail.
            if int(os.environ.get("RANK", "0")) != 0:
                sys.exit(1)
            raise
        self.dist, self.device = init_distributed(device)
        self.amp_dtype, why_fp32 = amp_dtype(self.device, cfg.amp)
        if why_fp32:
            self.echo(why_fp32)
        self._hold = contextlib.ExitStack()
        self._created = False
        # Records wait here until the run is accepted (``accept``): a run refused before that (changed
        # inputs on --resume, a bad option found by build) leaves no header in the log, nor its folders.
        self._pending: list[str] | None = []
        if self.dist.is_main:
            self._claim(cfg.out, cfg.resume)
        try:
            self.ckpt_path = os.path.join(cfg.out, CHECKPOINT)
            self.saved = None
            if cfg.resume:
                if not os.path.isfile(self.ckpt_path):
                    raise click.ClickException(f"--resume: no checkpoint at {self.ckpt_path}; drop --resume to "
                                               f"start a new run there")
                self.saved = load_checkpoint(self.ckpt_path, require=REQUIRED)
                if self.saved.get("method") != method:
                    raise click.ClickException(f"{self.ckpt_path} was written by {self.saved.get('method')!r}, "
                                               f"not {method!r}; use another --out")
                lacks = [k for k in ("state", "rng", "epoch", "step") if k not in self.saved]
                if lacks:
                    raise click.ClickException(f"{self.ckpt_path}: incomplete checkpoint (it lacks "
                                               f"{', '.join(lacks)}), so it cannot be resumed; drop --resume "
                                               f"and use another --out to start again")
                cfg, self.arch_changes = merge_arch(cfg, self.saved["config"], given_on_command_line(),
                                                    self.ckpt_path)
            elif os.path.isfile(self.ckpt_path):
                raise click.ClickException(f"{cfg.out} already holds a run; pass --resume to continue it or "
                                           f"choose another --out")
            self.cfg = cfg
            self.step = self.first_step = 0
            self.epoch = 0
            self.t0 = time.time()
            self.budget = TimeBudget(cfg.time_budget)
            seed_everything(cfg.seed, self.dist.rank)
            self.log_path = os.path.join(cfg.out, LOG)
            self._header()
        except BaseException:
            self._hold.close()
            self._tidy_refused(cfg.out)
            raise

    def _claim(self, out: str, resume: bool) -> None:
        """Create ``out``, take its lock (one trainer per folder) and clear temporary files of dead runs.

        A folder that holds other things and no run (a data folder given as --out by mistake) is refused:
        checkpoint.pt, log.jsonl and .train/ would land among them."""
        self._created = not os.path.exists(out)
        if not resume and os.path.isdir(out):
            names = [n for n in os.listdir(out) if TMP_MARK not in n]
            if names and not set(names) & RUN_NAMES:
                what = "1 other entry" if len(names) == 1 else f"{len(names)} other entries"
                raise click.ClickException(f"--out {out}: holds {what} (e.g. {sorted(names)[0]}) and no run; a "
                                           f"trainer writes checkpoint.pt, log.jsonl and .train/ into --out: "
                                           f"choose a new or empty folder")
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise click.ClickException(f"--out {out}: cannot create the folder ({describe_os_error(e, out)})") from None
        self._hold.enter_context(folder_lock(os.path.join(out, LOCK_DIR), f"train into {out}"))
        # its DataLoader workers hold no copy of the lock (closed at fork) and die with this process
        # (train.loader.worker): the lock ends with it
        mark_trainer()
        remove_stale_temps(out)

    # ---- logging
    def _header(self) -> None:
        head = {"git": git_revision(), "config": self.cfg.to_dict(), "method": self.method,
                "versions": library_versions(), "world_size": self.dist.world_size,
                "device": str(self.device), "precision": "bf16" if self.amp_dtype else "fp32",
                "argv": sys.argv, "resume": bool(self.saved),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if self.saved and getattr(self, "arch_changes", None):
            head["arch_from_checkpoint"] = {k: v[1] for k, v in self.arch_changes.items()}
        self.log(head, _first=True)

    def log(self, record: dict[str, Any], _first: bool = False) -> None:
        """Append one JSON line (main rank only); the first line of a log is its header."""
        if not self.dist.is_main:
            return
        if not _first:
            record = {"epoch": self.epoch, "step": self.step,
                      "elapsed_s": round(time.time() - self.t0, 3)} | record
        line = json.dumps(record, sort_keys=not _first, default=str) + "\n"
        if self._pending is not None:
            self._pending.append(line)
            return
        self._append(line)

    def accept(self) -> None:
        """The run goes ahead: write the records held back since it started (header first)."""
        pending, self._pending = self._pending or [], None
        if self.dist.is_main and not self.saved and os.path.isfile(self.log_path):
            # a new run where an earlier one failed before its first checkpoint: one log per run
            k = 1
            while os.path.exists(f"{self.log_path}.{k}"):
                k += 1
            os.replace(self.log_path, f"{self.log_path}.{k}")
            self.echo(f"an earlier run's log, which never reached a checkpoint, is kept as {self.log_path}.{k}")
        if pending:
            self._append("".join(pending))

    def _append(self, text: str) -> None:
        try:
            with open(self.log_path, "a") as f:
                f.write(text)
        except OSError as e:
            raise click.ClickException(describe_os_error(e, self.log_path, need=len(text.encode())) +
                                       f" (the log so far and {self.ckpt_path} are kept)") from None

    def echo(self, msg: str) -> None:
        if self.dist.is_main:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)

    def progress(self, it: Iterable, total: int | None, desc: str):
        """A tqdm bar with rate and ETA on the main rank; the bare iterable elsewhere."""
        from tqdm import tqdm

        return tqdm(it, total=total, desc=desc, disable=not self.dist.is_main, dynamic_ncols=True,
                    mininterval=1.0, file=sys.stderr)

    # ---- steps
    def finite(self, stats: dict[str, Any]) -> dict[str, float]:
        """A step's statistics as floats (one device sync); a NaN or inf stops the run with one line.

        Nothing is written on the way out, so the last checkpoint stays good.
        """
        tensors = [k for k, v in stats.items() if isinstance(v, torch.Tensor)]
        values = dict(stats)
        if tensors:
            values |= dict(zip(tensors, torch.stack([stats[k].detach().float().reshape(())
                                                     for k in tensors]).tolist()))
        for key, v in values.items():
            if not math.isfinite(v):
                self.log({"event": "non_finite", "what": key, "value": str(v)})
                what = f"{key.replace('_', ' ')} is {v} at epoch {self.epoch} step {self.step}"
                if not os.path.isfile(self.ckpt_path):
                    raise NonFiniteLoss(
                        f"{what}; no checkpoint was written, so there is nothing to resume. Check the data "
                        f"(`python -m augment verify`), then start again in a new --out (or after deleting "
                        f"{self.cfg.out}) with a lower learning rate (--lr) or another --seed")
                raise NonFiniteLoss(
                    f"{what}; last good checkpoint: {self.ckpt_path}. Check the data (`python -m augment "
                    f"verify`), then continue from that checkpoint with a lower learning rate "
                    f"(`--resume --lr X`) or a new seed")
        return {k: float(v) for k, v in values.items()}

    @property
    def done(self) -> bool:
        """True once ``--max-steps`` (or ``--stop-at-step``) steps are done or the ``--time-budget`` is spent (on any rank)."""
        if self.cfg.max_steps and self.step >= self.cfg.max_steps:
            return True
        if self.cfg.stop_at_step and self.step >= self.cfg.stop_at_step:
            return True
        if self.step == self.first_step:
            # The budget is checked after each step: before this session's first one only the seconds a
            # checkpoint carried count, so a run makes one step however long its setup took.
            return 0 < self.budget.seconds <= self.budget.before
        return self.budget.reached(self.dist, self.device)

    def autocast(self):
        """The run's precision for a forward pass: bf16 autocast as ``--amp`` and the device allow, else fp32."""
        return autocast(self.device, self.amp_dtype)

    def place_decoding(self, loader: Any) -> None:
        """``--decode-device cuda``: the training loader decodes its JPEG batches on this run's GPU; where it
        cannot, one line says why and decoding stays on the CPU. The log records which."""
        if self.cfg.decode_device != "cuda":
            return
        decode_on = getattr(loader, "decode_on", None)
        why = decode_on(self.device) if decode_on else "this method's data are not a shard set"
        if why:
            self.echo(f"--decode-device cuda: {why}; decoding on the CPU")
        self.log({"event": "decode_device", "device": "cpu" if why else str(self.device), "why": why})

    def wrap(self, model: nn.Module) -> nn.Module:
        """Move to the device (channels-last with ``--channels-last``) and wrap in DDP under torchrun."""
        model = model.to(self.device, memory_format=memory_format(self.cfg.channels_last))
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    # ---- checkpoints
    def restore(self, objects: dict[str, Any]) -> ResumeState:
        """Load every object's state from the checkpoint when resuming; a fresh state otherwise.

        Trainers call this right before their first step, so the ``--time-budget`` clock starts here:
        building models and loaders is not training time.
        """
        self.budget.t0 = time.monotonic()
        if not self.saved:
            return ResumeState()
        state = self.saved["state"]
        missing = [k for k in objects if k not in state]
        if missing:
            raise click.ClickException(f"{self.ckpt_path} lacks {missing}; it was written by another "
                                       f"version of this trainer")
        for name, obj in objects.items():
            unwrap(obj).load_state_dict(state[name]) if isinstance(obj, nn.Module) \
                else obj.load_state_dict(state[name])
        set_rng_state(self.saved["rng"])
        self.epoch, self.step = self.saved["epoch"], self.saved["step"]
        self.first_step = self.step
        self.budget.before = float(self.saved.get("train_seconds", 0.0))
        self.log({"event": "resumed", "from_epoch": self.epoch, "from_step": self.step,
                  "train_seconds": round(self.budget.before, 1)})
        return ResumeState(self.saved["epoch"], self.saved["step"], self.saved.get("extra", {}))

    def save(self, objects: dict[str, Any], encoder: nn.Module, epoch: int,
             extra: dict[str, Any] | None = None) -> None:
        """Write ``out/checkpoint.pt`` atomically (main rank); ``epoch`` = epochs completed."""
        if not self.dist.is_main:
            return
        ck = checkpoint_dict(method=self.method, config=self.cfg.to_dict(), encoder=encoder,
                             state={k: state_of(v) for k, v in objects.items()}, epoch=epoch, step=self.step,
                             train_seconds=self.budget.spent, rng=rng_state(), git=git_revision(),
                             versions=library_versions(), extra=extra or {})
        save_checkpoint(ck, self.ckpt_path)
        self.log({"event": "checkpoint", "path": self.ckpt_path, "epochs_done": epoch})

    def close(self) -> None:
        """Leave the process group and release the folder's lock; a run refused before it began leaves
        nothing behind (its lock folder, and --out itself when it made it and nothing else is there)."""
        if self.dist.enabled and dist.is_initialized():
            dist.destroy_process_group()
        self._hold.close()
        self._tidy_refused(self.cfg.out)

    def _tidy_refused(self, out: str) -> None:
        """A run refused before ``accept`` removes its lock folder, and ``out`` when it made it (if empty)."""
        if self.dist.is_main and self._pending is not None:
            for path in (os.path.join(out, LOCK_DIR), out if self._created else None):
                with contextlib.suppress(OSError, TypeError):
                    os.rmdir(path)           # only when empty




def write_bare_checkpoint(path: str, *, method: str, cfg: CommonConfig, encoder: nn.Module,
                          extra: dict[str, Any] | None = None) -> None:
    """A checkpoint with an encoder and no optimiser state (``train.random``, converted weights)."""
    ck = checkpoint_dict(method=method, config=cfg.to_dict(), encoder=encoder, state={}, epoch=0, step=0,
                         train_seconds=0.0, rng=rng_state(), git=git_revision(), versions=library_versions(),
                         extra=extra or {})
    out = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise click.ClickException(f"--out {os.path.dirname(path) or out}: cannot create the folder "
                                   f"({describe_os_error(e, out)})") from None
    save_checkpoint(ck, path)
