"""What a run recorded, read back for a results page: every protocol fact printed comes from here.

A training run's ``log.jsonl`` (its header's config, its ``data`` event, its last ``epoch`` and
``checkpoint`` events), its checkpoint, the manifest of the shard set it read, a probe's ``probe.json``
and a top-1 evaluation's JSON. Nothing is assumed: a fact that was not recorded prints as "not recorded".
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

NOT_RECORDED = "not recorded"


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The JSON objects of a log, one per line (an empty list when the file is absent)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass(frozen=True)
class TrainFacts:
    """One training run as its log recorded it."""

    method: str
    config: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)      # the log's "data" event
    manifest_config: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    epochs_done: int = 0
    seconds: float = 0.0
    git: str = ""
    precision: str = NOT_RECORDED
    capped: bool = False        # the wall-clock safety net stopped it

    @property
    def planned(self) -> int:
        """The steps it was budgeted (0: none recorded)."""
        return int(self.config.get("max_steps") or 0)

    @property
    def short(self) -> bool:
        """Stopped by the time cap before its planned steps: not comparable with full rows."""
        return self.capped and self.planned > 0 and self.steps < self.planned


def precision_of(head: dict[str, Any]) -> str:
    """bf16 or fp32, as the run's log header records it. Logs from before ``--amp cuda|on|off`` hold a
    boolean ``amp``, which then meant bf16 autocast on CUDA only."""
    if "precision" in head:
        return str(head["precision"])
    amp, device = head.get("config", {}).get("amp"), str(head.get("device", ""))
    if isinstance(amp, bool) and device:
        return "bf16" if amp and device.startswith("cuda") else "fp32"
    return NOT_RECORDED


def train_facts(run_dir: str) -> TrainFacts | None:
    """The facts of the run in ``run_dir`` (None without a log)."""
    rows = read_jsonl(os.path.join(run_dir, "log.jsonl"))
    if not rows:
        return None
    head, events = rows[0], rows[1:]

    def last(kind: str) -> dict[str, Any]:
        return next((r for r in reversed(events) if r.get("event") == kind), {})

    ck, ep = last("checkpoint"), last("epoch")
    return TrainFacts(method=head.get("method", NOT_RECORDED), config=head.get("config", {}), data=last("data"),
                      manifest_config=_manifest_config(head.get("config", {}).get("shards", "")),
                      steps=int(ck.get("step", 0)), epochs_done=int(ck.get("epochs_done", 0)),
                      seconds=float(ep.get("train_seconds", 0.0)), git=str(head.get("git", ""))[:7],
                      precision=precision_of(head), capped=bool(last("time_budget")))


def _manifest_config(shards: str) -> dict[str, Any]:
    path = os.path.join(shards, "manifest.json") if shards else ""
    if not path or not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f).get("config", {})


def trained_on(f: TrainFacts) -> str:
    """What the run trained on, in words, from its data event and its set's manifest."""
    d, m = f.data, f.manifest_config
    if "train" in d and "classes" in d:  # an ImageFolder read directly (supervised)
        return f"`{f.config.get('data', '?')}` train split, {d['train']:,} images, {d['classes']} classes, with labels"
    if not d:
        return NOT_RECORDED
    src = ", ".join(str(s.get("name", "?")) for s in d.get("sources", []))
    if packed(m):
        return f"{src}: {d['count']:,} images of {d['size']} px, packed unchanged (`augment pack`), no labels"
    augs = [a for a in ("scale", "rotation", "jitter") if m.get(a)]
    recipe = m.get("recipe", "paper")
    return (f"{src}: {d['count']:,} patches of S = {d['size']} (`augment render`, {recipe} recipe, "
            f"{' + '.join(augs) if augs else 'no augmentation'}), set `{d.get('set_id', '?')}`")


def budget(f: TrainFacts) -> str:
    """The stop rule the run was given: its step budget, epoch count and wall-clock cap."""
    c = f.config
    parts = []
    if c.get("max_steps"):
        parts.append(f"{c['max_steps']:,} steps")
    if isinstance(c.get("epochs"), int):
        parts.append(f"at most {c['epochs']:,} epochs")
    if c.get("time_budget"):
        parts.append(f"cap {c['time_budget']:g} s")
    return ", ".join(parts) or NOT_RECORDED


def reached(f: TrainFacts | None) -> str:
    """The steps a run reached, and a warning when the time cap stopped it short of its budget."""
    if f is None:
        return NOT_RECORDED
    unit = "generator step" if f.method in ("monogan", "bigan") else "step"
    n = f"{f.steps:,} {unit}{'' if f.steps == 1 else 's'}"
    if f.short:
        return f"stopped by the time cap at {f.steps:,} of {f.planned:,} steps — not comparable"
    return n


def packed(manifest_config: dict[str, Any]) -> bool:
    """A set made by ``augment pack``: a dataset's images unchanged, not patches of one image."""
    return manifest_config.get("kind") in ("imagefolder", "packed")


def is_single_image(checkpoint: dict[str, Any]) -> bool:
    """Did this checkpoint's encoder learn from one image? Its shard set's manifest says
    (``augment.manifest.is_single_image``: a packed dataset never is); no readable set: no."""
    import click

    from augment.manifest import is_single_image as set_is_single_image, read_manifest

    shards = (checkpoint.get("config") or {}).get("shards")
    if not shards:
        return False
    try:
        return set_is_single_image(read_manifest(shards))
    except (click.ClickException, OSError):
        return False


def probe_facts(result_dir: str) -> dict[str, Any] | None:
    """A probe's ``probe.json`` (None before it finished)."""
    path = os.path.join(result_dir, "probe.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def probe_protocol(res: dict[str, Any]) -> dict[str, str]:
    """The protocol one probe ran, in words, keyed by fact: what makes two probes comparable."""
    c, r = res.get("config", {}), res.get("resolved", {})
    dims = r.get("dims", {})
    bn = c.get("probe_bn")
    return {
        "data": f"`{c.get('data_root', '?')}` ({res.get('dataset', '?')}, {res.get('protocol', '?')} protocol)",
        "train / eval images": f"{r.get('train_count', 0):,} / {r.get('eval_count', 0):,} ({r.get('eval_split', '?')})",
        "image size": "x".join(str(v) for v in r.get("image_size", [])) or NOT_RECORDED,
        "epochs": str(c.get("epochs", NOT_RECORDED)),
        "schedule": _schedule(c, r),
        "batch": str(c.get("batch_size", NOT_RECORDED)),
        "pooling": f"{c.get('pooling', '?')} ({', '.join(f'{k} {v:,}' for k, v in dims.items())} dims)",
        "probe BN": "per feature (BatchNorm1d, affine=False)" if bn is True else
                    ("none" if bn is False else str(bn) if bn is not None else NOT_RECORDED),
        "limit_train": str(c.get("limit_train", 0) or "all"),
        # probes from before --amp recorded none: their backbone pass had no autocast (fp32)
        "backbone pass": str(r.get("precision") or ("fp32" if c and "amp" not in c else NOT_RECORDED)),
    }


def _schedule(config: dict[str, Any], resolved: dict[str, Any]) -> str:
    """The lr schedule as run: its name, start, the recorded changes (epoch: factor) and the last rate."""
    lrs = resolved.get("lr_per_epoch", [])
    if not lrs:
        return f"{config.get('schedule', '?')} ({NOT_RECORDED})"
    changes = [f"x{b / a:.3g} from epoch {e + 1}" for e, (a, b) in enumerate(zip(lrs, lrs[1:]), 1) if a and b != a]
    return (f"{config.get('schedule', '?')}: lr {lrs[0]:g}, {', '.join(changes) or 'constant'} "
            f"(epochs counted from 1); last {lrs[-1]:.3g}")


def layer_accuracies(result_dir: str, layers: list[str]) -> list[float | None]:
    """Top-1 (%) per layer from a probe's ``probe.json`` (its final-epoch accuracy, as the paper reports)."""
    top1 = (probe_facts(result_dir) or {}).get("top1", {})
    return [None if top1.get(layer) is None else float(top1[layer]) for layer in layers]


def read_json(path: str) -> dict[str, Any]:
    """A JSON file's object, or {} when it is absent or unreadable (a step that has not finished)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def run_data(run_dir: str) -> dict[str, Any]:
    """The ``data`` event of a run's log (classes, train / eval counts), or {}."""
    return next((r for r in read_jsonl(os.path.join(run_dir, "log.jsonl")) if r.get("event") == "data"), {})


def run_facts(run_dir: str) -> dict[str, Any] | None:
    """A retraining run's configuration (its log header), data counts, network and the steps its checkpoint
    reached, and what stopped it."""
    from train.checkpoint import load_checkpoint

    rows = read_jsonl(os.path.join(run_dir, "log.jsonl"))
    ck_path = os.path.join(run_dir, "checkpoint.pt")
    if not rows or not os.path.isfile(ck_path):
        return None
    header, ck, data = rows[0], load_checkpoint(ck_path), run_data(run_dir)
    conf, steps, train = header.get("config", {}), ck.get("step", 0), data.get("train")
    stopped = ("steps" if conf.get("max_steps") and steps >= conf["max_steps"]
               else "time cap" if (ck.get("extra") or {}).get("time_budget_reached") else "epochs")
    return {"config": conf, "train": train, "eval": data.get("eval"), "classes": data.get("classes"),
            "steps": steps, "train_seconds": ck.get("train_seconds", 0.0), "stopped": stopped,
            "epochs": steps * conf.get("batch_size", 0) / train if train else None,
            "spec": ck.get("encoder_spec", {}), "precision": precision_of(header)}
