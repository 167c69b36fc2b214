"""The one training loop. A method supplies build / step / hooks / evaluate; the loop does the rest.

``fit(method)`` owns the run folder, the log, resume (exact, mid-epoch), the time budget, ``--max-steps``,
the NaN stop, checkpoints and DDP (through ``train.run.Run``). A method (``Method`` subclass) knows only
its networks, its optimisation step and its per-epoch work::

    class MyMethod(Method):
        name, Config = "mine", MyConfig
        def build(self, run):            # modules, optimisers, schedulers to checkpoint, by name;
            ...                          # also sets self.loader (epoch(e, skip), batches_per_epoch)
            return {"model": model, "optimizer": opt}   # and self.encoder (what the probes read)
        def step(self, run, batch):      # one optimisation step -> its statistics (tensors or floats)
            ...

Optional hooks: ``check`` (validate options before the run folder exists), ``begin_epoch`` (DeepCluster's
clustering, a GAN's lr), ``after_step`` (sample sheets), ``end_epoch`` (a scheduler's step),
``evaluate`` (after each complete epoch; also after a stop with ``evaluate_at_stop``), ``extra_state`` / ``load_extra`` (state beyond ``state_dict``s),
``lr`` (logged). ``step`` may return None for a batch that completes no counted step (MonoGAN's critic
batches): the step counter, ``--max-steps`` and the logs count optimisation steps as the method defines
them. docs/training.md describes the contract.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
from typing import Any, ClassVar

import click

from augment.manifest import Manifest, read_manifest
from train.run import ResumeState, Run


# Options that only say how long or how a run goes on: a resume applies their new values.
RESUMABLE = frozenset({"resume", "out", "epochs", "max_steps", "stop_at_step", "time_budget", "log_every", "device", "amp",
                       "channels_last", "decode_device", "verify_stream", "allow_changed_inputs", "sample_every",
                       "eval_batches", "skip_bad_images"})
# What fixes the order of the batches: a resume with other values is not the same run.
INPUTS = ("shards", "batch_size", "seed", "workers")


class Meter:
    """Means of named statistics over steps (or samples, with ``n``)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, values: dict[str, float], n: int = 1) -> None:
        self.n += n
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * n

    def means(self) -> dict[str, float]:
        return {k: round(v / max(self.n, 1), 6) for k, v in self.sums.items()}


class Method:
    """What a training method supplies to ``fit``; see the module docstring."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    needs: ClassVar[tuple[str, ...]] = ("shards",)   # options that must be given
    evaluate_at_stop: ClassVar[bool] = False        # also evaluate after an epoch cut short (GAN sheets)

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.loader: Any = None
        self.encoder: Any = None

    def check(self) -> None:
        """Fail before the run folder exists on options that cannot work (default: missing inputs)."""
        for opt in self.needs:
            if not getattr(self.cfg, opt):
                raise click.ClickException(f"--{opt.replace('_', '-')} is missing: give "
                                           f"{'a shard set folder (python -m augment render)' if opt == 'shards' else 'it'}")

    def manifest(self) -> Manifest:
        """The ``--shards`` set's manifest, read once (``check`` and ``build`` both need it)."""
        if getattr(self, "_manifest_of", None) != self.cfg.shards:
            self._manifest, self._manifest_of = read_manifest(self.cfg.shards), self.cfg.shards
        return self._manifest

    def build(self, run: Run) -> dict[str, Any]:
        raise NotImplementedError

    def step(self, run: Run, batch: Any) -> dict[str, Any] | None:
        raise NotImplementedError

    def begin_epoch(self, run: Run, epoch: int, skip: int) -> None:
        return None

    def after_step(self, run: Run) -> None:
        return None

    def end_epoch(self, run: Run, epoch: int, complete: bool) -> dict[str, Any]:
        return {}

    def evaluate(self, run: Run) -> dict[str, Any]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra(self, extra: dict[str, Any]) -> None:
        return None

    def lr(self) -> float | None:
        """The learning rate to log: ``self.opt``'s first group's, when the method has one."""
        opt = getattr(self, "opt", None)
        return opt.param_groups[0]["lr"] if opt is not None else None

    def apply_changes(self, objects: dict[str, Any], changes: dict[str, tuple]) -> set[str]:
        """Apply options changed on ``--resume``; returns the names applied (default: ``lr``, by scaling
        every optimiser's and scheduler's learning rates by new / old)."""
        if "lr" not in changes or not changes["lr"][0]:
            return set()
        ratio = changes["lr"][1] / changes["lr"][0]
        for obj in objects.values():
            for group in getattr(obj, "param_groups", []):
                group["lr"] *= ratio
                if "initial_lr" in group:
                    group["initial_lr"] *= ratio
            if hasattr(obj, "base_lrs"):
                obj.base_lrs = [b * ratio for b in obj.base_lrs]
        return {"lr"}


def train_epoch(run: Run, method: Method, epoch: int, skip: int) -> tuple[dict[str, float], int]:
    """Steps over batches ``skip..`` of ``epoch`` until they end or the run is done; (means, batches done)."""
    meter, window, done = Meter(), Meter(), skip
    batches = method.loader.epoch(epoch, skip)
    for batch in run.progress(batches, len(batches), f"{method.name} epoch {epoch}"):
        stats = method.step(run, batch)
        done += 1
        if stats is not None:
            values = run.finite(stats)
            meter.add(values)
            window.add(values)
            run.step += 1
            if run.step % run.cfg.log_every == 0:
                log_window(run, method, window)
                window = Meter()
            method.after_step(run)
        # max-steps or budget; under DDP a collective, so every rank asks once per batch
        if run.done:
            break
    if window.n:
        log_window(run, method, window)
    return meter.means(), done


def log_window(run: Run, method: Method, window: Meter) -> None:
    """One ``train`` line: the means since the last one, the lr and the training seconds so far."""
    run.log({"event": "train", **window.means(), "lr": method.lr(), "train_seconds": round(run.budget.spent, 3)})


def run_epochs(run: Run, method: Method, objects: dict[str, Any], state: ResumeState) -> dict[str, Any]:
    """Epochs until ``--epochs``, ``--max-steps`` or the budget; a checkpoint after each and at a stop."""
    epoch, skip, summary = state.epoch, int(state.extra.get("batches_done", 0)), {}
    while epoch < run.cfg.epochs and not run.done:
        run.epoch = epoch
        method.begin_epoch(run, epoch, skip)
        stats, done = train_epoch(run, method, epoch, skip)
        complete = done >= method.loader.batches_per_epoch
        stats |= method.end_epoch(run, epoch, complete)
        if complete or method.evaluate_at_stop:
            stats |= {f"eval_{k}": v for k, v in method.evaluate(run).items()}
        epoch, skip = (epoch + 1, 0) if complete else (epoch, done)
        summary = stats | {"batches_done": done, "lr": method.lr(), "train_seconds": round(run.budget.spent, 1)}
        run.log({"event": "epoch", "complete": complete, "epochs_done": epoch, **summary})
        reached = run.budget.reached(run.dist, run.device)
        extra = {"batches_done": skip, "time_budget_reached": reached, "world_size": run.dist.world_size,
                 **method.extra_state()}
        if getattr(method.loader, "manifest", None) is not None:
            extra["set_id"] = method.loader.manifest.id
        run.save(objects, method.encoder, epoch, extra=extra)
    if run.budget.reached(run.dist, run.device):
        run.log({"event": "time_budget", "seconds": run.cfg.time_budget, "spent": round(run.budget.spent, 1)})
    return summary


def check_resume(run: Run, method: Method, objects: dict[str, Any], state: ResumeState) -> None:
    """On ``--resume``: refuse changed inputs (unless ``--allow-changed-inputs``); apply or refuse every
    other changed option, never ignore it; log what was applied from this step on."""
    if not run.saved:
        return
    saved, cfg = run.saved["config"], run.cfg
    changes = {k: (saved[k], v) for k, v in cfg.to_dict().items()
               if k in saved and saved[k] != v and k not in cfg.ARCH_FIELDS and k not in RESUMABLE}
    changes.pop("shards", None)      # the set is compared by its id, not by where it lies
    m = getattr(method.loader, "manifest", None)
    if m is not None and state.extra.get("set_id") not in (None, m.id):
        changes["shard set"] = (state.extra["set_id"], m.id)
    if state.extra.get("world_size", run.dist.world_size) != run.dist.world_size:
        changes["world size"] = (state.extra["world_size"], run.dist.world_size)
    inputs = {k: v for k, v in changes.items() if k in (*INPUTS, "shard set", "world size")}
    if inputs and not cfg.allow_changed_inputs:
        said = "; ".join(f"{k.replace('_', '-')} {a} -> {b}" for k, (a, b) in inputs.items())
        raise click.ClickException(f"--resume: the training inputs differ from the checkpoint's ({said}), so "
                                   f"the run would not continue exactly; restore them, or pass "
                                   f"--allow-changed-inputs to go on anyway (the log records it)")
    rest = {k: v for k, v in changes.items() if k not in inputs}
    applied = method.apply_changes(objects, rest)
    refused = {k: v for k, v in rest.items() if k not in applied}
    if refused:
        said = ", ".join(f"--{k.replace('_', '-')} {a} -> {b}" for k, (a, b) in refused.items())
        back = " ".join(f"--{k.replace('_', '-')} {a}" for k, (a, b) in refused.items())
        raise click.ClickException(f"--resume: {said} cannot change in the middle of a {method.name} run; give the "
                                   f"checkpoint's value ({back}) to continue, or start a new run in another --out")
    # run-length and logging options apply as given; they are recorded as the method's changes are
    changes |= {k: (saved[k], v) for k, v in cfg.to_dict().items()
                if k in RESUMABLE and k not in ("resume", "out") and k in saved and saved[k] != v}
    if changes:
        run.log({"event": "changed_on_resume", "applied": {k: list(v) for k, v in changes.items()}})
        run.echo(f"resume: applying {', '.join(sorted(changes))} from step {run.step} (recorded in the log)")


def fit(method: Method) -> dict[str, Any]:
    """Train ``method`` as its config says; returns the last epoch's statistics (also in OUT/log.jsonl)."""
    method.check()
    run = Run(method.cfg, method.name)
    term = on_sigterm_interrupt()
    try:
        if run.cfg != method.cfg:       # --resume: the checkpoint's architecture fields won
            method.cfg = run.cfg
            method.check()
        objects = method.build(run)
        run.place_decoding(method.loader)
        data = getattr(method.loader, "manifest", None)
        if data is not None:
            run.log({"event": "data", "set_id": data.id, "count": data.count, "size": data.size,
                     "sources": data.sources})
        state = run.restore(objects)
        method.load_extra(state.extra)
        check_resume(run, method, objects, state)
        run.accept()
        summary = run_epochs(run, method, objects, state)
        run.echo(stop_line(run, method))
        return summary
    except KeyboardInterrupt as e:
        code = 128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT)
        if not run.dist.is_main:    # every rank got the signal: rank 0 says where the run stands
            sys.exit(code)
        err = click.ClickException(interrupted_line(run, method, e))
        err.exit_code = code
        raise err from None
    finally:
        if term is not None:
            signal.signal(signal.SIGTERM, term)
        run.close()


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a cluster's scheduler sends before a kill), handled as a Ctrl-C is."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def on_sigterm_interrupt():
    """Make SIGTERM stop the run as Ctrl-C does (one line, the last checkpoint kept); returns the previous
    handler (None off the main thread, where no handler can be set)."""
    def handler(signum, frame):
        raise Terminated(signum)
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


def launcher_prefix(cmdline_path: str | None = None) -> list[str]:
    """How this rank's launcher was started, up to the trainer (``torchrun --nproc_per_node 2``), read
    from the parent's command line; ``["python"]`` outside torchrun or where it cannot be read."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_WORLD_SIZE" not in os.environ:
        return ["python"]
    try:
        with open(cmdline_path or f"/proc/{os.getppid()}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return ["torchrun", "--nproc_per_node", os.environ.get("LOCAL_WORLD_SIZE", "1")]
    # The launcher's own arguments end where the trainer begins: `-m MODULE`, or the rank's script.
    ends = [i for i, a in enumerate(argv) if i >= 2 and (a == "-m" or a == sys.argv[0])]
    argv = argv[:ends[0]] if ends else argv
    if len(argv) > 1 and os.path.basename(argv[1]) == "torchrun":
        return ["torchrun", *argv[2:]]
    return ["python", *argv[1:]] if argv else ["python"]


def without_option(args: list[str], option: str) -> list[str]:
    """``args`` less every ``option VALUE`` and ``option=VALUE``."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(option + "="):
            out.append(a)
    return out


def resume_command(method: Method, drop: str | None = None) -> str:
    """The command line of this run with ``--resume`` (what continues it), under its launcher if any;
    ``drop``: an option whose stop was reached (continuing with it would stop again at once)."""
    args = [a for a in sys.argv[1:] if a != "--resume"]
    args = without_option(args, drop) if drop else args
    module = type(method).__module__
    if module == "__main__":       # `python -m train.rotnet`: the module's own name is in its spec
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else "train." + method.name
    return shlex.join([*launcher_prefix(), "-m", module, *args, "--resume"])


def stop_line(run: Run, method: Method) -> str:
    """Why the run stopped, where its checkpoint is and the command that continues it (one line)."""
    cfg = run.cfg
    if cfg.stop_at_step and run.step >= cfg.stop_at_step:
        why = f"--stop-at-step {cfg.stop_at_step} reached"
    elif cfg.max_steps and run.step >= cfg.max_steps:
        why = f"--max-steps {cfg.max_steps} reached"
    elif run.budget.seconds > 0 and run.budget.exceeded:
        why = f"--time-budget {cfg.time_budget:g} s spent"
    else:
        why = f"all {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} done"
    kept = run.ckpt_path if os.path.isfile(run.ckpt_path) else "none written"
    drop = "--stop-at-step" if why.startswith("--stop-at-step") else None
    return (f"stopped at step {run.step}: {why}; checkpoint: {kept}; to continue: "
            f"{resume_command(method, drop)}")


def interrupted_line(run: Run, method: Method, why: KeyboardInterrupt | None = None) -> str:
    """The one line of a Ctrl-C or SIGTERM: what the last checkpoint holds and the command that resumes."""
    what = f"stopped by {why}" if isinstance(why, Terminated) else "interrupted"
    if not os.path.isfile(run.ckpt_path):
        return (f"{what} at step {run.step} before the first checkpoint; nothing to resume: run the "
                f"same command again (in a new --out, or after deleting {run.cfg.out})")
    try:
        from train.checkpoint import load_checkpoint

        ck = load_checkpoint(run.ckpt_path)
        done = f"step {ck['step']}, {ck['epoch']} epoch{'s' if ck['epoch'] != 1 else ''} complete"
    except (click.ClickException, KeyError):
        done = "its last save"
    return (f"{what} at step {run.step}; {run.ckpt_path} holds the run up to {done}; "
            f"resume with: {resume_command(method)}")


def echo_stats(stats: dict[str, Any]) -> None:
    """The final statistics on one line of stderr (what a command prints when it ends); rank 0 only.

    ``batches_done`` counts the batches of the last epoch, so the line calls it ``batches_in_last_epoch``."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    stats = {("batches_in_last_epoch" if k == "batches_done" else k): v for k, v in stats.items()}
    click.echo(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()
                        if not isinstance(v, (dict, list))), err=True)
