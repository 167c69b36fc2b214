"""Configs and their command lines: a trainer's frozen dataclass is the only source of its defaults.

Fields are declared with ``option(default, help, lo=.., hi=.., choices=..)``; ``command(Config, fn)``
generates the click command from the fields (``batch_size`` -> ``--batch-size``, a bool -> ``--x/--no-x``,
a tuple -> a comma-separated list, a range -> ``click.IntRange``/``FloatRange``), so the command's
defaults are the dataclass's by construction. A subclass may override a default with a plain value
(``batch_size: int = 192``): the option's help and bounds are inherited from the base class.

Named variants (docs/variants.md): a config with a ``variant`` field and ``VARIANTS = {"released": {field:
value}}`` gets ``--variant``, which sets those fields unless their options are given explicitly; the config
built (and logged) holds the resolved values. ``ALIASES`` keeps an old option name working for a field that
took its place (``--feature-relu`` -> ``--features``).
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import click
from click.core import ParameterSource

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


class Finite(click.FloatRange):
    """``click.FloatRange`` that also refuses nan and inf (nan compares false with any bound)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if number != number or number in (float("inf"), float("-inf")):
            self.fail(f"{value!r} is not a finite number in the range {self._describe_range()}", param, ctx)
        return number


def option(default: Any, help: str = "", *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False, choices: tuple[str, ...] | None = None,
           name: str | None = None, bare: Any = None) -> Any:
    """A config field with what its command-line option needs (help, bounds, choices, option name)."""
    meta = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices,
            "name": name, "bare": bare}
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
                            "(0: no limit). A step budget: every schedule (lr, momentum, milestones) runs over "
                            "min(--max-steps, --epochs x steps per epoch) steps.", lo=0)
    stop_at_step: int = option(0, "Stop (with a checkpoint) after this many steps in total without changing "
                               "the planned schedule: one job of a longer run, continued with --resume "
                               "(0: no such stop).", lo=0)
    resume: bool = option(False, "Continue from OUT/checkpoint.pt.")
    amp: str = option("cuda", "bf16 autocast. cuda: on CUDA only (CPU runs stay fp32); on: also on a CPU with "
                      "native bf16 (avx512_bf16/amx_bf16; fp32 elsewhere, said in one line); off: fp32.",
                      choices=AMP_CHOICES, bare="cuda")
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
    # --variant NAME -> the field values it sets (explicit options win); "paper" is the fields' defaults.
    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {}
    # Old flag -> (field, {flag value: field value}): a boolean alias option of a choice field.
    ALIASES: ClassVar[dict[str, tuple[str, dict[bool, Any]]]] = {"no_amp": ("amp", {True: "off"})}

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
    if kind is int:
        return kind if m.get("lo") is None and m.get("hi") is None else click.IntRange(m["lo"], m["hi"])
    if kind is float:
        return Finite(m.get("lo"), m.get("hi"), min_open=m.get("lo_open", False), max_open=m.get("hi_open", False))
    return kind


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
        bare = {} if m.get("bare") is None else {"is_flag": False, "flag_value": m["bare"]}
        return click.Option([flag, f.name], type=click.Choice(m["choices"]), **bare, **kw)
    return click.Option([flag, f.name], type=_range(kind, m), **kw)


def params(cls: type) -> list[click.Option]:
    """The click options of every field of ``cls`` (except ``UNUSED`` ones), in field order."""
    hints = typing.get_type_hints(cls)
    return [_param(cls, f, hints[f.name]) for f in dataclasses.fields(cls) if f.name not in cls.UNUSED]


def variant_config(cls: type, variant: str = "paper", **given: Any) -> Any:
    """``cls`` with the fields ``given`` explicitly, the rest from ``variant`` where it sets them, else the
    defaults: what ``--variant`` builds."""
    if variant != "paper" and variant not in cls.VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: use paper or {', '.join(cls.VARIANTS)}")
    values = {k: v for k, v in cls.VARIANTS.get(variant, {}).items() if k not in given}
    return cls(**({"variant": variant} if "variant" in cls.__dataclass_fields__ else {}), **values, **given)


def aliases(cls: type) -> dict[str, tuple[str, dict[bool, Any]]]:
    """Every ``ALIASES`` entry of ``cls`` and its bases (a subclass adds to its bases' aliases)."""
    merged = {k: v for klass in reversed(cls.__mro__) for k, v in getattr(klass, "ALIASES", {}).items()}
    return {k: v for k, v in merged.items() if v[0] not in cls.UNUSED}


def _alias_params(cls: type) -> list[click.Option]:
    """A ``--x/--no-x`` flag per alias; a one-way alias (only True mapped, e.g. ``--no-amp``) is one flag."""
    out = []
    for a, (f, m) in aliases(cls).items():
        said = f"Alias of --{f.replace('_', '-')} ({', '.join(f'{k}: {v}' for k, v in m.items())})."
        decls = [f"--{a.replace('_', '-')}"] if set(m) == {True} else [f"--{a.replace('_', '-')}/--no-{a.replace('_', '-')}"]
        flag = {"is_flag": True} if set(m) == {True} else {}
        out.append(click.Option([*decls, a], default=None, help=said, **flag))
    return out


def _build(cls: type, kw: dict[str, Any]) -> Any:
    """The config of one command line: aliases folded into their fields, then the variant resolved."""
    ctx = click.get_current_context()
    given = {k: v for k, v in kw.items() if k in cls.__dataclass_fields__ and k != "variant"
             and ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
    for alias, (f, mapping) in aliases(cls).items():
        if kw.get(alias) is None or kw[alias] not in mapping:
            continue
        if f in given and given[f] != mapping[kw[alias]]:
            raise click.UsageError(f"--{alias.replace('_', '-')} contradicts --{f.replace('_', '-')} "
                                   f"{given[f]}: give one of them")
        given[f] = mapping[kw[alias]]
    return variant_config(cls, kw.get("variant", "paper"), **given)


def command(cls: type, fn: Callable[[Any], Any], help: str, name: str | None = None) -> click.Command:
    """A click command whose options are ``cls``'s fields (plus its ``ALIASES``); it calls ``fn(config)``
    with the config those options and ``--variant`` resolve to."""
    return click.Command(name, params=params(cls) + _alias_params(cls), callback=lambda **kw: fn(_build(cls, kw)),
                         help=help, context_settings={"help_option_names": ["-h", "--help"]})


def parse_config(cls: type, args: list[str]) -> Any:
    """The config the generated command builds from ``args`` (no training): what tests compare."""
    cmd = command(cls, lambda cfg: cfg, "parse only")
    return cmd.main(list(args), standalone_mode=False)
