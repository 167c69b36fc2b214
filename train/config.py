"""Configs and their command lines: a trainer's frozen dataclass is the only source of its defaults.

Fields are declared with ``option(default, help, lo=.., hi=.., choices=..)``; ``command(Config, fn)``
generates the click command from the fields (``batch_size`` -> ``--batch-size``, a bool -> ``--x/--no-x``,
a tuple -> a comma-separated list, a range -> ``click.IntRange``/``FloatRange``), so the command's
defaults are the dataclass's by construction. A subclass may override a default with a plain value
(``batch_size: int = 192``): the option's help and bounds are inherited from the base class.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import click

# --amp: where bf16 autocast is used (train.run.amp_dtype). "cuda" keeps every CPU run's numerics fp32.
AMP_CHOICES = ("cuda", "on", "off")
# --decode-device: where the loader decodes JPEG batches (train.loader.decode).
DECODE_DEVICES = ("cpu", "cuda")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def option(default: Any, help: str = "", *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False, choices: tuple[str, ...] | None = None,
           name: str | None = None) -> Any:
    """A config field with what its command-line option needs (help, bounds, choices, option name)."""
    meta = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices,
            "name": name}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class CommonConfig:
    """Options every trainer has. Subclasses add their own fields and name their ``ARCH_FIELDS``."""

    shards: str = option("", "Shard set: a folder with manifest.json, or its URL.")
    out: str = option("runs/default", "Run folder: log.jsonl and checkpoint.pt are written here.")
    batch_size: int = option(256, "Samples per optimisation step (per rank).", lo=1)
    workers: int = option(min(4, available_cpus()), "DataLoader worker processes (decoding and native "
                          "augmentation); at most the CPUs this process may use by default.", lo=0)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    seed: int = option(0, "Seed of every random choice of the run.", lo=0)
    epochs: int = option(1, "Epochs to train (in total, over resumes).", lo=1)
    max_steps: int = option(0, "Stop (with a checkpoint) after this many optimisation steps in total "
                            "(0: no limit).", lo=0)
    resume: bool = option(False, "Continue from OUT/checkpoint.pt.")
    amp: str = option("cuda", "bf16 autocast. cuda: on CUDA only (CPU runs stay fp32); on: also on a CPU with "
                      "native bf16 (avx512_bf16/amx_bf16; fp32 elsewhere, said in one line); off: fp32.",
                      choices=AMP_CHOICES)
    channels_last: bool = option(False, "Channels-last networks (faster with --amp on on a bf16 CPU: "
                                 "docs/training.md).")
    decode_device: str = option("cpu", "Where JPEG batches are decoded: cpu (in the workers) or cuda (batched "
                                "nvJPEG on the training GPU; falls back to cpu, said in one line, without one).",
                                choices=DECODE_DEVICES)
    log_every: int = option(20, "Log averaged statistics every K steps.", lo=1)
    time_budget: float = option(0.0, "Stop with a checkpoint after this many training seconds, summed over "
                                "resumes (0: none). Equal budgets make methods comparable on one machine.", lo=0)
    allow_changed_inputs: bool = option(False, "With --resume: continue although the shard set, --batch-size, "
                                        "--seed, --workers or the world size differ from the checkpoint's "
                                        "(the exact-resume guarantee then lapses; the log records it).")
    verify_stream: bool = option(True, "Hash every shard as it streams and stop if it differs from the "
                                 "manifest (--no-verify-stream: trust the bytes).")

    # Fields that define the network: on resume the checkpoint's values win over the command line.
    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ()
    # Fields a trainer does not read (no option is generated for them).
    UNUSED: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return dict(sorted(asdict(self).items()))


def _meta(cls: type, name: str) -> dict[str, Any]:
    """The field's option metadata from the nearest class in the MRO that declared it with ``option``."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata:
            return dict(f.metadata)
    return {}


def _split(kind: type) -> Callable[[click.Context, click.Parameter, Any], tuple]:
    def parse(ctx, param, value) -> tuple:
        if isinstance(value, tuple):
            return value
        items = tuple(v.strip() for v in str(value).split(",") if v.strip())
        try:
            return tuple(kind(v) for v in items)
        except ValueError:
            raise click.BadParameter(f"{value!r}: give a comma-separated list of {kind.__name__}s, e.g. 1,2,3") from None
    return parse


def _range(kind: type, m: dict[str, Any]):
    if m.get("lo") is None and m.get("hi") is None:
        return kind
    cls = click.IntRange if kind is int else click.FloatRange
    extra = {} if kind is int else {"min_open": m["lo_open"], "max_open": m["hi_open"]}
    return cls(m["lo"], m["hi"], **extra)


def _param(cls: type, f: dataclasses.Field, kind: Any) -> click.Option:
    m = _meta(cls, f.name)
    flag = "--" + (m.get("name") or f.name.replace("_", "-"))
    kw: dict[str, Any] = {"help": m.get("help") or None, "show_default": True, "default": f.default}
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        return click.Option([f"{flag}/--no-{flag[2:]}", f.name], **kw)
    if origin is tuple:
        kw |= {"default": ",".join(str(v) for v in f.default), "callback": _split(args[0])}
        return click.Option([flag, f.name], **kw)
    if origin in (typing.Union, types.UnionType):        # e.g. float | None: no default value
        inner = next(a for a in args if a is not type(None))
        return click.Option([flag, f.name], type=_range(inner, m), **kw)
    if m.get("choices"):
        return click.Option([flag, f.name], type=click.Choice(m["choices"]), **kw)
    return click.Option([flag, f.name], type=_range(kind, m), **kw)


def params(cls: type) -> list[click.Option]:
    """The click options of every field of ``cls`` (except ``UNUSED`` ones), in field order."""
    hints = typing.get_type_hints(cls)
    return [_param(cls, f, hints[f.name]) for f in dataclasses.fields(cls) if f.name not in cls.UNUSED]


def command(cls: type, fn: Callable[[Any], Any], help: str, name: str | None = None) -> click.Command:
    """A click command whose options are ``cls``'s fields; it calls ``fn(cls(**options))``."""
    return click.Command(name, params=params(cls), callback=lambda **kw: fn(cls(**kw)), help=help,
                         context_settings={"help_option_names": ["-h", "--help"]})


def parse_config(cls: type, args: list[str]) -> Any:
    """The config the generated command builds from ``args`` (no training): what tests compare."""
    cmd = command(cls, lambda cfg: cfg, "parse only")
    return cmd.main(list(args), standalone_mode=False)
