"""`make repro-finetune-cpu` (`python -m probe.finetune`): the paper's Tables 4 and 5 at reduced scale, and
Fig. 3 and Fig. 5 from the same checkpoints.

* **Table 4**: the small encoder retrained on CIFAR-10 with conv1-2 frozen, conv1-2 taken from each given
  checkpoint (``train.supervised --init-from CKPT --init-layers conv1,conv2 --freeze conv1,conv2``) or
  replaced by the Scattering transform (``--frontend scattering``); top-1 of the retrained network on
  CIFAR-10 test (``probe.top1``, which also proves the frozen blocks did not move).
* **Table 5**: conv1-2 from each single-image model, the whole network fine-tuned (no freeze), then linear
  probes on every conv layer (``probe.linear``), beside the same network trained from scratch.
* **Figures**: Fig. 3 (``probe.style``, the first single-image model beside the supervised one) and Fig. 5
  (``probe.visualize maximize`` and ``retrieve``, every conv layer of the first single-image model).

The checkpoints default to those ``make repro-cpu`` writes (read off ``probe.repro.main_plan``), so both
pipelines share one work folder; every step goes through ``probe.repro.step`` (a done-marker with the
argv: re-running resumes, a changed argument is an error). The results page is generated from what the
runs recorded (log headers, checkpoints, top1.json, probe.json, the figures' JSON). Choices:
docs/finetune.md.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace

import click
import numpy as np

from augment.seeds import mix
from probe.paper import TABLE4, TABLE5
from probe.repro import (ReproConfig, cifar_root, git_rev, layer_accuracies, machine, main_plan, probe_args,
                         slug, step, train_common)
from probe.runfacts import precision_of

LAYERS5 = ["conv1", "conv2", "conv3", "conv4", "conv5"]     # the paper's Table 5 columns
SEED5 = "Full sup., seed +1"                                # Table 5's noise row: trained from scratch, seed + 1
BLOCKS = "conv1,conv2"
# The paper's row a checkpoint's method is set beside (the paper has no MonoGAN row: BiGAN is its GAN).
PAPER_ROW = {"supervised": "full-sup", "random": "random", "scattering": "scattering", "monogan": "bigan-a",
             "bigan": "bigan-a", "rotnet": "rotnet-a", "deepcluster": "deepcluster-a"}
FIG5_UNITS = 4          # the paper's "four random non-cherry-picked target filters" per layer


@dataclass(frozen=True)
class FinetuneConfig:
    """Every option of the pipeline (the CLI's defaults come from here)."""

    images: str = "../shared/data/images"
    cifar: str = "../shared/data/cifar10-jpg.tar.gz"
    work: str = "runs/repro-cpu"
    out: str = "docs/results-finetune.md"
    checkpoints: tuple[tuple[str, str], ...] = ()   # (label, path) of single-image models; (): repro's
    supervised: str = ""                            # Table 4's Full sup. conv1-2; "": repro's
    random: str = ""                                # Table 4's Random conv1-2; "": repro's
    retrain_steps: int = 800                        # Table 4, per row (0: the time cap alone)
    retrain_seconds: float = 150.0                  # Table 4 time cap per conv1-2 row
    scattering_seconds: float = 540.0               # Table 4 time cap of the Scattering row (slower steps)
    finetune_steps: int = 800                       # Table 5, per row
    finetune_seconds: float = 150.0
    probe_epochs: int = 12
    probe_jobs: int = 2
    schedule: str = "paper"
    batch_size: int = 64
    workers: int = 1
    seed: int = 0
    seed_row: bool = True                           # Random (T4), Full sup. (T5) again with seed + 1: the noise
    spec_controls: bool = True                      # Random / from-scratch rows with each model's network
    figures: bool = True
    content: str = "ameyoko.jpg"                    # Fig. 3 content (Image A), in --images or a path
    style: str = "animals.png"                      # Fig. 3 style (Image B)
    style_steps: int = 150
    style_size: int = 160
    maximize_steps: int = 128
    maximize_size: int = 64
    device: str = "cpu"


@dataclass(frozen=True)
class Source:
    """A checkpoint whose conv1-2 a row uses."""

    label: str
    path: str
    kind: str            # supervised | random | single | control
    spec: dict
    method: str
    trained_on: str      # what its conv1-2 learned from, read from the checkpoint (and its set / log)


@dataclass(frozen=True)
class Row:
    table: str           # "4" or "5"
    label: str
    paper: str           # key of TABLE4 / TABLE5, or ""
    run: str             # the retrained / fine-tuned run folder
    result: str          # top1.json (Table 4) or the probe folder (Table 5)
    source: Source | None
    ref: str = ""        # label of the row it is compared with in the reading (same network, random conv1-2)


@dataclass
class Plan:
    steps: list[tuple[str, list[str]]]
    table4: list[Row]
    table5: list[Row]
    figures: dict[str, str]      # figure part -> its PNG in the work folder


def repro_config(cfg: FinetuneConfig) -> ReproConfig:
    """The ReproConfig whose step(), cifar_root() and probe_args() this pipeline shares."""
    # fp32: every command's own --amp. The bf16 check covered MonoGAN's and RotNet's pre-training, not a
    # retraining from frozen blocks, and the argv stays that of the run behind docs/results-finetune.md.
    return ReproConfig(images=cfg.images, cifar=cfg.cifar, work=cfg.work, probe_epochs=cfg.probe_epochs,
                       probe_jobs=cfg.probe_jobs, schedule=cfg.schedule, batch_size=cfg.batch_size,
                       workers=cfg.workers, seed=cfg.seed, device=cfg.device, amp="default", channels_last=False)


def from_repro(rcfg: ReproConfig, **overrides) -> FinetuneConfig:
    """The config for probe.repro to run this pipeline on its own work folder, data and device."""
    return FinetuneConfig(**({"images": rcfg.images, "cifar": rcfg.cifar, "work": rcfg.work, "seed": rcfg.seed,
                              "workers": rcfg.workers, "device": rcfg.device, "probe_jobs": rcfg.probe_jobs,
                              "batch_size": rcfg.batch_size} | overrides))


def ft_dir(cfg: FinetuneConfig, *parts: str) -> str:
    return os.path.join(cfg.work, "finetune", *parts)


def name_of(label: str) -> str:
    """A row's folder name: repro's slug, runs of dashes collapsed."""
    return re.sub("-+", "-", slug(label))


# --------------------------------------------------------------------------- checkpoints


def repro_checkpoints(rcfg: ReproConfig, data: str) -> dict[str, list[tuple[str, str]]]:
    """The checkpoints ``make repro-cpu`` trains, by the module that writes them: label -> checkpoint.pt."""
    found: dict[str, list[tuple[str, str]]] = {}
    for name, argv, _ in main_plan(rcfg, data):
        if argv[0].startswith("train.") and "--out" in argv:
            path = os.path.join(argv[argv.index("--out") + 1], "checkpoint.pt")
            found.setdefault(argv[0], []).append((name.split(" ", 1)[1], path))
    return found


def describe(ck: dict, path: str) -> str:
    """What a checkpoint's encoder learned from, as its config, shard set manifest and log record it."""
    from augment.manifest import read_manifest

    method, conf = ck.get("method", "?"), ck.get("config") or {}
    n = ck.get("step", 0)
    steps = f"{n:,} {'generator ' if method in ('monogan', 'bigan') else ''}step{'' if n == 1 else 's'}"
    if method == "random":
        return f"no training (random init, seed {conf.get('seed')})"
    if conf.get("shards"):
        try:
            m = read_manifest(conf["shards"])
        except (click.ClickException, OSError, ValueError, KeyError):
            return f"{method} on {conf['shards']} ({steps})"
        names = [f"Image {s['named']}" if s.get("named") else str(s.get("name")) for s in m.sources]
        what = ", ".join(names) if len(names) <= 3 else f"{len(names):,} images"
        return f"{method} on {what} ({m.count:,} patches of {m.size} px, {steps})"
    if conf.get("data"):
        n = run_data(os.path.dirname(path)).get("train")
        count = f"{n:,} images, " if n else ""
        return f"{method} on the labels of {os.path.basename(conf['data'].rstrip('/'))} ({count}{steps})"
    return f"{method} ({steps})"


def is_single_image(ck: dict) -> bool:
    from augment.manifest import read_manifest

    shards = (ck.get("config") or {}).get("shards")
    try:
        return bool(shards) and len(read_manifest(shards).sources) == 1
    except (click.ClickException, OSError, ValueError, KeyError):
        return False


def load_source(label: str, path: str, kind: str, option: str) -> tuple[Source, dict]:
    """A checkpoint this pipeline can take conv1-2 from (the small encoder's); else one line naming it."""
    from train.checkpoint import load_checkpoint
    from train.supervised import Config as SupConfig, initial_spec

    if not os.path.exists(path):
        raise click.ClickException(f"{option} {path}: no such checkpoint; run `make repro-cpu` first, or give the "
                                   f"checkpoint with {option}")
    ck = load_checkpoint(path)
    arch = (ck.get("encoder_spec") or {}).get("arch")
    if arch != "small":
        raise click.ClickException(f"{option} {path}: holds a {arch!r} encoder; Tables 4 and 5 at reduced scale "
                                   f"retrain the small encoder on CIFAR-10: give a checkpoint trained with "
                                   f"--arch small")
    try:
        spec, _ = initial_spec(SupConfig(arch="small", init_from=path))
    except click.ClickException as e:
        raise click.ClickException(f"{option} {label}: {e.message}") from None
    return Source(label, path, kind, asdict(spec), str(ck.get("method")), describe(ck, path)), ck


def resolve_sources(cfg: FinetuneConfig, rcfg: ReproConfig, data: str) -> dict[str, list[Source]]:
    """The supervised, random and single-image checkpoints: as given, else those of ``make repro-cpu``."""
    found = repro_checkpoints(rcfg, data)

    def default(module: str, option: str) -> str:
        if not found.get(module):
            raise click.ClickException(f"{option} is missing and probe.repro trains no {module}: give it")
        return found[module][0][1]

    sup = load_source("Full sup.", cfg.supervised or default("train.supervised", "--supervised"), "supervised",
                      "--supervised")[0]
    rand = load_source("Random", cfg.random or default("train.random", "--random"), "random", "--random")[0]
    singles = [load_source(label, path, "single", "--checkpoint")[0] for label, path in cfg.checkpoints]
    if not cfg.checkpoints:
        for module, runs in found.items():
            for label, path in runs:
                if module not in ("train.supervised", "train.random"):
                    src, ck = load_source(label, path, "single", "--checkpoint")
                    singles += [src] if is_single_image(ck) else []
    if not singles:
        raise click.ClickException("no single-image model to retrain from; give --checkpoint LABEL=PATH")
    return {"supervised": [sup], "random": [rand], "single": singles}


def network(spec: dict) -> tuple:
    """What, besides conv1-2's weights, a retraining inherits from the checkpoint's encoder spec."""
    return spec.get("norm"), spec.get("act"), spec.get("sobel")


def network_name(spec: dict) -> str:
    if not spec:
        return "–"
    norm = {"bn": "BatchNorm", "none": "no normalisation", "layer": "LayerNorm"}.get(spec.get("norm"), spec.get("norm"))
    act = {"relu": "ReLU", "leaky": "leaky ReLU"}.get(spec.get("act"), spec.get("act"))
    return f"{norm}, {act}" + (", Sobel" if spec.get("sobel") else "")


def control_sources(cfg: FinetuneConfig, sources: dict[str, list[Source]]) -> list[Source]:
    """A seeded random encoder for every network (norm, activation) of a single-image model that differs
    from the Random checkpoint's: retraining takes the spec with conv1-2, so such a model's rows train
    another network from conv3 on, and only a random encoder of the same network separates the two."""
    base = network(sources["random"][0].spec)
    out, seen = [], set()
    for src in sources["single"]:
        net = network(src.spec)
        if not cfg.spec_controls or net == base or net in seen:
            continue
        seen.add(net)
        path = ft_dir(cfg, "init", "random-" + name_of("-".join(str(v) for v in net)), "checkpoint.pt")
        out.append(Source(f"Random, {network_name(src.spec)}", path, "control", src.spec, "random",
                          f"no training (random init, seed {cfg.seed})"))
    return out


def write_control(src: Source, seed: int) -> dict:
    """Write (once) a random encoder of ``src.spec`` as train.random would; returns its step record."""
    import torch
    from train.checkpoint import load_checkpoint
    from train.models import EncoderSpec, build_encoder
    from train.random_init import Config as RandomConfig
    from train.run import write_bare_checkpoint

    t0 = time.time()
    if os.path.isfile(src.path):
        ck = load_checkpoint(src.path)
        if ck["encoder_spec"] != src.spec:
            raise click.ClickException(f"{src.path} holds another network than {network_name(src.spec)}; delete it")
        commit = str(ck.get("git") or "not recorded")[:7]  # the commit that wrote it, not this re-run's
    else:
        commit = git_rev()
        torch.manual_seed(seed)     # as train.random: the encoder's weights depend on the seed alone
        write_bare_checkpoint(src.path, method="random", cfg=RandomConfig(out=os.path.dirname(src.path), seed=seed,
                                                                           arch=src.spec["arch"]),
                              encoder=build_encoder(EncoderSpec.from_dict(src.spec)),
                              extra={"init": "kaiming_normal fan_out", "network": src.spec})
    return {"name": f"init {src.label}", "argv": ["(in process)", json.dumps(src.spec, sort_keys=True)],
            "seconds": time.time() - t0, "commit": commit}


# --------------------------------------------------------------------------- the plan


def retrain_argv(cfg: FinetuneConfig, data: str, out: str, init: str = "", freeze: bool = False,
                 seconds: float = 0.0, steps: int = 0, seed_offset: int = 0, scattering: bool = False) -> list[str]:
    """``train.supervised`` on CIFAR-10 train: conv1-2 from ``init`` (frozen with ``freeze``) or the
    scattering frontend; ``steps`` steps unless the ``seconds`` cap comes first."""
    argv = ["train.supervised", "--dataset", "imagefolder", "--data", data, "--arch", "small",
            "--batch-size", str(cfg.batch_size)]
    argv += ["--init-from", init, "--init-layers", BLOCKS] if init else []
    argv += ["--freeze", BLOCKS] if freeze else []
    argv += ["--frontend", "scattering"] if scattering else []
    budget = train_common(repro_config(cfg), out, seconds, seed_offset)
    return argv + budget + (["--max-steps", str(steps)] if steps else [])


def top1_argv(cfg: FinetuneConfig, data: str, run: str, out: str, frozen_from: str = "") -> list[str]:
    argv = ["probe.top1", "--checkpoint", os.path.join(run, "checkpoint.pt"), "--data", data, "--out", out,
            "--device", cfg.device, "--workers", str(cfg.workers)]
    return argv + (["--frozen-from", frozen_from, "--frozen", BLOCKS] if frozen_from else [])


def table4_rows(cfg: FinetuneConfig, sources: dict[str, list[Source]],
                controls: list[Source]) -> list[tuple[Row, dict]]:
    """(row, retraining options) for Table 4: Full sup., Random (and its second seed), controls,
    Scattering, then every single-image model."""
    rand = sources["random"][0]
    rows = [(sources["supervised"][0], {}), (rand, {})]
    if cfg.seed_row:
        rows.append((replace(rand, label="Random, seed +1"), {"seed_offset": 1}))
    rows += [(c, {}) for c in controls]
    rows.append((None, {"scattering": True}))
    rows += [(s, {}) for s in sources["single"]]
    out = []
    for src, opts in rows:
        label = src.label if src else "Scattering"
        run, res = ft_dir(cfg, "runs", "table4-" + name_of(label)), ft_dir(cfg, "top1", name_of(label) + ".json")
        key = PAPER_ROW.get("scattering" if src is None else src.method, "")
        ref = ref_label(src, controls, "Random")
        out.append((Row("4", label, key, run, res, src, ref), opts))
    return out


def ref_label(src: Source | None, controls: list[Source], base: str) -> str:
    """The row a single-image row is compared with: the random encoder of its own network."""
    if src is None or src.kind != "single":
        return ""
    same = [c for c in controls if network(c.spec) == network(src.spec)]
    return (same[0].label.replace("Random", base, 1) if same else base)


def table5_rows(cfg: FinetuneConfig, sources: dict[str, list[Source]],
                controls: list[Source]) -> list[tuple[Row, int]]:
    """(row, seed offset) for Table 5: trained from scratch (each network; Full sup. again with seed + 1,
    the probes' noise), then conv1-2 from each single-image model, all fine-tuned."""
    def row(label: str, paper: str, src: Source | None, ref: str = "") -> Row:
        return Row("5", label, paper, ft_dir(cfg, "runs", "table5-" + name_of(label)),
                   ft_dir(cfg, "probes", "table5-" + name_of(label)), src, ref)

    rows = [(row("Full sup.", "full-sup", None), 0)]
    if cfg.seed_row:
        rows.append((row(SEED5, "full-sup", None), 1))
    rows += [(row(c.label.replace("Random", "Full sup.", 1), "full-sup", c), 0) for c in controls]
    rows += [(row(s.label, PAPER_ROW.get(s.method, ""), s, ref_label(s, controls, "Full sup.")), 0)
             for s in sources["single"]]
    return rows


def figure_steps(cfg: FinetuneConfig, data: str, single: Source, sup: Source) -> tuple[list, dict[str, str]]:
    """Fig. 3 (style transfer, single-image model beside supervised) and Fig. 5 (every conv layer of the
    single-image model: activation maximisation and the top 9 CIFAR-10 test images of 4 seeded units)."""
    from train.models import ARCHS

    fig = ft_dir(cfg, "figures")
    steps = [("fig3 style transfer", ["probe.style", "--checkpoint", single.path, "--compare", sup.path,
                                      "--content", image_path(cfg, cfg.content), "--style", image_path(cfg, cfg.style),
                                      "--out", os.path.join(fig, "fig3.png"), "--steps", str(cfg.style_steps),
                                      "--size", str(cfg.style_size), "--device", cfg.device])]
    pngs = {"fig3": os.path.join(fig, "fig3.png")}
    for i, (layer, width, *_) in enumerate(ARCHS[single.spec["arch"]]):
        units = ",".join(str(u) for u in fig5_units(width, cfg.seed, i))
        common = ["--checkpoint", single.path, "--layer", layer, "--units", units, "--device", cfg.device]
        pngs[f"max-{layer}"], pngs[f"top-{layer}"] = (os.path.join(fig, f"fig5-maximize-{layer}.png"),
                                                      os.path.join(fig, f"fig5-retrieve-{layer}.png"))
        steps += [(f"fig5 maximize {layer}", ["probe.visualize", "maximize", *common, "--out", pngs[f"max-{layer}"],
                                              "--steps", str(cfg.maximize_steps), "--size", str(cfg.maximize_size),
                                              "--seed", str(cfg.seed)]),
                  (f"fig5 retrieve {layer}", ["probe.visualize", "retrieve", *common, "--data",
                                              os.path.join(data, "test"), "--top", "9", "--out", pngs[f"top-{layer}"]])]
    return steps, pngs


def fig5_units(width: int, seed: int, layer_index: int) -> list[int]:
    """Four distinct units of a layer, drawn from (seed, layer): random, not picked by how they look."""
    rng = np.random.default_rng(mix(seed, layer_index, 0xF165))
    return sorted(int(u) for u in rng.choice(width, size=min(FIG5_UNITS, width), replace=False))


def image_path(cfg: FinetuneConfig, name: str) -> str:
    return name if os.path.isfile(name) else os.path.join(cfg.images, name)


def make_plan(cfg: FinetuneConfig, data: str, sources: dict[str, list[Source]], controls: list[Source]) -> Plan:
    """Every step of both tables (and the figures), in order."""
    steps = []
    t4 = table4_rows(cfg, sources, controls)
    for row, opts in t4:
        scattering = opts.get("scattering", False)
        cap = cfg.scattering_seconds if scattering else cfg.retrain_seconds
        steps.append((f"table4 retrain {row.label}",
                      retrain_argv(cfg, data, row.run, "" if scattering else row.source.path, not scattering,
                                   cap, cfg.retrain_steps, opts.get("seed_offset", 0), scattering)))
        steps.append((f"table4 top-1 {row.label}",
                      top1_argv(cfg, data, row.run, row.result, "" if scattering else row.source.path)))
    t5 = table5_rows(cfg, sources, controls)
    rcfg = repro_config(cfg)
    for row, seed_offset in t5:
        steps.append((f"table5 fine-tune {row.label}",
                      retrain_argv(cfg, data, row.run, row.source.path if row.source else "", False,
                                   cfg.finetune_seconds, cfg.finetune_steps, seed_offset)))
        steps.append((f"table5 probe {row.label}", probe_args(rcfg, os.path.join(row.run, "checkpoint.pt"),
                                                              row.result, data)))
    pngs = {}
    if cfg.figures:
        fig_steps, pngs = figure_steps(cfg, data, sources["single"][0], sources["supervised"][0])
        steps += fig_steps
    names = [n for n, _ in steps]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise click.ClickException(f"two rows would share the step {dup!r}: give the checkpoints distinct labels")
    return Plan(steps, [r for r, _ in t4], [r for r, _ in t5], pngs)


# --------------------------------------------------------------------------- what the runs recorded


@dataclass
class Measured:
    row: Row
    value: float | list[float | None] | None     # Table 4: top-1; Table 5: top-1 per LAYERS5
    run: dict | None                             # run_facts() of the retrained / fine-tuned run
    result: dict                                 # top1.json or probe.json as written


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def run_data(run_dir: str) -> dict:
    """The ``data`` event of a run's log (classes, train / eval counts), or {}."""
    try:
        with open(os.path.join(run_dir, "log.jsonl")) as f:
            return next((r for r in map(json.loads, f) if r.get("event") == "data"), {})
    except (OSError, json.JSONDecodeError):
        return {}


def run_facts(run_dir: str) -> dict | None:
    """A run's configuration (its log header), data counts and the steps its checkpoint reached."""
    from train.checkpoint import load_checkpoint

    log, ck_path = os.path.join(run_dir, "log.jsonl"), os.path.join(run_dir, "checkpoint.pt")
    if not (os.path.isfile(log) and os.path.isfile(ck_path)):
        return None
    with open(log) as f:
        header = json.loads(f.readline())
    ck, data, conf = load_checkpoint(ck_path), run_data(run_dir), header.get("config", {})
    steps, train = ck.get("step", 0), data.get("train")
    stopped = ("steps" if conf.get("max_steps") and steps >= conf["max_steps"]
               else "time cap" if (ck.get("extra") or {}).get("time_budget_reached") else "epochs")
    return {"config": conf, "train": train, "eval": data.get("eval"), "classes": data.get("classes"),
            "steps": steps, "train_seconds": ck.get("train_seconds", 0.0), "stopped": stopped,
            "epochs": steps * conf.get("batch_size", 0) / train if train else None,
            "spec": ck.get("encoder_spec", {}), "precision": precision_of(header)}


def collect(plan: Plan) -> tuple[list[Measured], list[Measured]]:
    """Every row's measured value (None until its result exists) with what its run recorded."""
    m4 = []
    for row in plan.table4:
        rec = read_json(row.result)
        m4.append(Measured(row, rec.get("top1"), run_facts(row.run), rec))
    m5 = []
    for row in plan.table5:
        rec = read_json(os.path.join(row.result, "probe.json"))
        accs = layer_accuracies(row.result) if rec else None
        m5.append(Measured(row, None if accs is None else accs + [None], run_facts(row.run), rec))
    return m4, m5


# --------------------------------------------------------------------------- the page


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "–" if v is None else f"{v:{fmt}}"


def row_name(m: Measured) -> str:
    r = m.row
    if r.source is None:
        from train.scattering import J_DEFAULT, L_DEFAULT

        what = (f"fixed Morlet scattering, J = {J_DEFAULT}, L = {L_DEFAULT}, and a learned 1×1 adapter"
                if r.table == "4" else "random (trained from scratch)")
    else:
        what = (r.source.trained_on if r.table == "4" else "conv1–2 random" if r.source.kind == "control"
                else f"conv1–2 from {r.source.trained_on}")
    seed = (m.run or {}).get("config", {}).get("seed")
    return f"**{r.label}**: {what}" + (f"; retrained with seed {seed}" if r.label.endswith("seed +1") else "")


def table4_md(m4: list[Measured]) -> str:
    """Table 4's layout (one top-1 column), the paper's value beside ours (and its row when named otherwise)."""
    lines = ["| conv1–2 (what they were trained on) | network | top-1 (ours) | top-1 (paper) |",
             "|---|---|---:|---:|"]
    for m in m4:
        prow = TABLE4.get(m.row.paper)
        paper = "–" if prow is None else f"{prow.columns['imagenet'][0]:.1f}" + (
            "" if prow.label == m.row.label else f" ({prow.label})")
        net = network_name((m.run or {}).get("spec") or (m.row.source.spec if m.row.source else {}))
        lines.append(f"| {row_name(m)} | {net} | {_f(m.value)} | {paper} |")
    return "\n".join(lines) + "\n"


def table5_md(m5: list[Measured]) -> str:
    """Table 5's layout (c1..c5), ours and the paper's value side by side per layer."""
    head = "| conv1–2 | " + " | ".join(f"c{i + 1} (ours) | c{i + 1} (paper)" for i in range(len(LAYERS5))) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(LAYERS5)]
    for m in m5:
        prow = TABLE5.get(m.row.paper)
        ours = m.value or [None] * len(LAYERS5)
        theirs = prow.columns["imagenet"] if prow else [None] * len(LAYERS5)
        name = row_name(m) + ("" if prow is None or prow.label == m.row.label else f" [paper: {prow.label}]")
        lines.append(f"| {name} | " + " | ".join(f"{_f(a)} | {_f(p)}" for a, p in zip(ours, theirs)) + " |")
    return "\n".join(lines) + "\n"


def noise(m4: list[Measured]) -> float | None:
    """How far the Random row's two training seeds land apart (None without the second seed)."""
    vals = {m.row.label: m.value for m in m4}
    a, b = vals.get("Random"), vals.get("Random, seed +1")
    return None if a is None or b is None else abs(a - b)


def mark(v: float, spread: float | None) -> str:
    return f"{round(v, 1) + 0.0:+.1f}" + (" *within noise*" if spread is not None and abs(v) < spread else "")


def reading4(m4: list[Measured]) -> str:
    """What Table 4 says (§4.4: single-image conv1-2 close to supervised, Scattering slightly below them)."""
    vals = {m.row.label: m.value for m in m4 if m.value is not None}
    sup, rand, spread = vals.get("Full sup."), vals.get("Random"), noise(m4)
    if sup is None or rand is None:
        return "Full sup. and Random have not both finished: no reading yet.\n"
    p = {k: r.columns["imagenet"][0] for k, r in TABLE4.items()}
    out = [f"- Full sup. − Random: {mark(sup - rand, spread)} points (paper {p['full-sup'] - p['random']:+.1f})."]
    if spread is not None:
        out.append(f"- Noise: two training seeds of the Random row land {spread:.1f} points apart; a difference "
                   f"smaller than that is marked *within noise* (one pair of seeds: a yardstick, not an error bar).")
    singles = [m for m in m4 if m.row.source is not None and m.row.source.kind == "single" and m.value is not None]
    for m in singles:
        ref = vals.get(m.row.ref, rand)
        prow = TABLE4.get(m.row.paper)
        pshare = (f"paper {prow.label}: {100 * (p[m.row.paper] - p['random']) / (p['full-sup'] - p['random']):.0f} %"
                  if prow else "")
        if m.row.ref not in (None, "Random"):  # its own network's control: the Random-to-Full-sup. scale mixes networks
            share = ("no share of the way from Random to Full sup. (those two train another network; its own "
                     "control is the yardstick)" + (f" — {pshare}" if pshare else ""))
        else:
            share = (f"{100 * (m.value - rand) / (sup - rand):.0f} % of the way from Random to Full sup."
                     if sup - rand > (spread or 0) else
                     "no share (Full sup. is not above Random by more than the noise)")
            share += f"; {pshare}" if pshare else ""
        out.append(f"- {m.row.label}: {m.value:.1f}, {mark(m.value - ref, spread)} vs {m.row.ref or 'Random'}, "
                   f"{mark(m.value - sup, spread)} vs Full sup.; {share}.")
    scat = vals.get("Scattering")
    if scat is not None and singles:
        below = all(scat < m.value for m in singles)
        out.append(f"- Scattering − Full sup.: {mark(scat - sup, spread)} points (paper "
                   f"{p['scattering'] - p['full-sup']:+.1f})"
                   + (": the fixed transform beats supervised conv1–2 at this budget." if scat - sup > (spread or 0)
                      else "."))
        out.append(f"- Scattering {scat:.1f} against the single-image rows "
                   f"({', '.join(f'{m.row.label} {m.value:.1f}: {mark(scat - m.value, spread)}' for m in singles)}): "
                   + ("below all of them, as in the paper (Scattering 49.2 under BiGAN 51.4, RotNet 49.5, "
                      "DeepCluster 52.5)." if below else "**not** below all of them: the paper's ordering (Scattering "
                      "49.2 slightly under the single-image rows, 49.5–52.5) does not hold here."))
    return "\n".join(out) + "\n"


def noise5(m5: list[Measured]) -> list[float | None] | None:
    """Per layer, how far Table 5's Full sup. and its seed + 1 row land apart (None without the second)."""
    vals = {m.row.label: m.value for m in m5 if m.value is not None}
    a, b = vals.get("Full sup."), vals.get(SEED5)
    if a is None or b is None:
        return None
    return [None if x is None or y is None else abs(x - y) for x, y in zip(a, b)]


def reading5(m5: list[Measured], spread: float | None) -> str:
    """What Table 5 says (A.3: fine-tuned from single-image conv1-2, the network recovers full supervision).
    *Within noise*: below Table 5's own seed spread of that layer where its seed row ran, else Table 4's."""
    vals = {m.row.label: m.value for m in m5 if m.value is not None}
    full = TABLE5["full-sup"].columns["imagenet"]
    own = noise5(m5)
    per_layer = own or [spread] * len(LAYERS5)
    out = []
    for m in m5:
        ref = vals.get(m.row.ref)
        if m.row.source is None or m.row.source.kind != "single" or m.value is None or ref is None:
            continue
        diffs = [(i, a - b) for i, (a, b) in enumerate(zip(m.value, ref)) if a is not None and b is not None]
        prow = TABLE5.get(m.row.paper)
        paper = (f"; paper ({prow.label} − Full sup., c1…c5): " + " / ".join(f"{a - b:+.1f}" for a, b in
                                                                     zip(prow.columns["imagenet"], full))
                 if prow else "")
        below = [(i, d) for i, d in diffs if per_layer[i] is not None and d < -per_layer[i]]
        worst = min(diffs, key=lambda d: d[1])
        held = "" if all(n is None for n in per_layer) else (
            " — no layer falls below by more than the noise, as the paper finds" if not below
            else f" — {LAYERS5[below[0][0]]} falls {-below[0][1]:.1f} points below, more than the noise: not "
                 f"recovered at this budget")
        out.append(f"- {m.row.label} − {m.row.ref}, per layer: "
                   + " / ".join(f"{LAYERS5[i]} {mark(d, per_layer[i])}" for i, d in diffs) + paper
                   + f". Lowest: {LAYERS5[worst[0]]} {worst[1]:+.1f}{held}.")
    if not out:
        return "No fine-tuned single-image row and its from-scratch reference have both finished: no reading yet.\n"
    if own:
        out.append("- Noise: Full sup. trained from scratch with two seeds lands "
                   + " / ".join(f"{LAYERS5[i]} {n:.1f}" for i, n in enumerate(own) if n is not None)
                   + " points apart; a layer's difference smaller than its spread is marked *within noise* (one "
                     "pair of seeds: a yardstick, not an error bar).")
    elif spread is not None:
        out.append(f"- *Within noise* uses Table 4's seed spread ({spread:.1f} points, a retraining's top-1): no "
                   f"second seed of Table 5 was run, so it is an indication for the probes, not a measurement.")
    return "\n".join(out) + "\n"


def distinct(values: list) -> str:
    """One value, or the distinct values in order (rows that differ are listed in the training table)."""
    seen = list(dict.fromkeys(json.dumps(v, sort_keys=True) if isinstance(v, (list, dict))
                              else f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v for v in values))
    return str(seen[0]) if len(seen) == 1 else " / ".join(str(v) for v in seen)


def protocol4(m4: list[Measured]) -> str:
    """Table 4's protocol, from the retraining runs' log headers and the top-1 records."""
    runs = [m.run for m in m4 if m.run]
    done = [m.result for m in m4 if m.result]
    if not runs or not done:
        return "_no Table 4 row has finished yet_\n"
    c = lambda k: distinct([r["config"].get(k) for r in runs])  # noqa: E731
    caps = distinct([f"{r['config'].get('time_budget', 0) / 60:g}" for r in runs])
    checked = sum(1 for m in m4 if m.result.get("frozen", {}).get("unchanged"))
    blocks = lambda key: distinct([",".join(r["config"].get(key) or []) or "–" for r in runs])  # noqa: E731
    evals = [m.result for m in m4 if m.result]
    return (f"Each row runs `train.supervised` on the labels of `{os.path.basename(c('data').rstrip('/'))}` "
            f"({distinct([r['train'] for r in runs])} training images, {distinct([r['classes'] for r in runs])} "
            f"classes): {distinct([r['spec'].get('arch') for r in runs])} encoder, batch {c('batch_size')}, SGD lr {c('lr')}, momentum {c('momentum')}, weight "
            f"decay {c('weight_decay')}, seed {c('seed')}, for {c('max_steps')} steps or {caps} min of training, "
            f"whichever comes first. conv1–2 come from the row's checkpoint (`--init-layers "
            f"{blocks('init_layers')}`) and stay frozen (`--freeze {blocks('freeze')}`; '–': the "
            f"Scattering row, whose transform has no weights); conv3–4 and the classifier start from the seed's "
            f"random initialisation. Top-1: `probe.top1` on the {distinct([e.get('count') for e in evals])} "
            f"{distinct([e.get('split') for e in evals])} images (centre crops, the trainer's own "
            f"evaluation); for {checked} of {len(done)} rows it also checked that conv1–2 are bit-identical to "
            f"the checkpoint they came from.\n")


def protocol5(m5: list[Measured]) -> str:
    """Table 5's protocol, from the fine-tuning runs' log headers and the probes' probe.json."""
    runs, probes = [m.run for m in m5 if m.run], [m.result for m in m5 if m.result]
    if not runs or not probes:
        return "_no Table 5 row has finished yet_\n"
    c = lambda k: distinct([r["config"].get(k) for r in runs])  # noqa: E731
    p = lambda k: distinct([r["config"].get(k) for r in probes])  # noqa: E731
    q = lambda k: distinct([r["resolved"].get(k) for r in probes])  # noqa: E731
    caps = distinct([f"{r['config'].get('time_budget', 0) / 60:g}" for r in runs])
    blocks = lambda key, none: distinct([",".join(r["config"].get(key) or []) or none for r in runs])  # noqa: E731
    return (f"Each row runs `train.supervised` as in Table 4 (batch {c('batch_size')}, lr {c('lr')}, seed "
            f"{c('seed')}) for {c('max_steps')} steps or {caps} min, with nothing frozen (`--freeze` "
            f"{blocks('freeze', 'empty')}): conv1–2 start from the row's checkpoint (`--init-layers "
            f"{blocks('init_layers', '–')}`; '–': trained from scratch), the rest from the seed's random "
            f"initialisation. Then `probe.linear` "
            f"({distinct([r.get('protocol') for r in probes])} protocol, pooling {q('pooling')}) on "
            f"{distinct([','.join(r.get('layers', [])) for r in probes])}: {p('epochs')} epochs, {p('schedule')} "
            f"schedule (milestones {q('milestones')}), trained on {q('train_count')} and evaluated on "
            f"{q('eval_count')} images, final-epoch top-1. The small encoder has no conv5 (c5: –).\n")


def training_md(ms: list[Measured]) -> str:
    lines = ["| run | steps | epochs | training seconds | stopped by | seed | network | precision |",
             "|---|---:|---:|---:|---|---:|---|---|"]
    for m in ms:
        r = m.run
        if r:
            lines.append(f"| Table {m.row.table}: {m.row.label} | {r['steps']:,} | {_f(r['epochs'], '.2f')} | "
                         f"{r['train_seconds']:.0f} | {r['stopped']} | {r['config'].get('seed')} | "
                         f"{network_name(r['spec'])} | {r['precision']} |")
    return "\n".join(lines) + "\n"


def scale_md(m4: list[Measured], m5: list[Measured], spread: float | None) -> str:
    """What this scale can and cannot show, with the budgets the runs actually reached."""
    runs = [m.run for m in m4 + m5 if m.run]
    if not runs:
        return ""
    steps = [r["steps"] for r in runs]
    epochs = [r["epochs"] for r in runs if r["epochs"] is not None]
    short = [f"{m.row.label} (Table {m.row.table}, {m.run['steps']:,})" for m in m4 + m5
             if m.run and m.run["stopped"] == "time cap"]
    noise_txt = f"{spread:.1f} points" if spread is not None else "not measured"
    return (f"Every network here trained {span(steps, ',')} steps ({span(epochs, '.2f')} epochs of its "
            f"training images); the paper retrained AlexNet on ImageNet LSVRC-12's 1.28M images to convergence, so its "
            f"columns are ImageNet top-1 (Table 4) and ImageNet linear probes (Table 5), set beside ours for the "
            f"pattern, not the values. "
            + (f"Stopped by the time cap before the step target: {', '.join(short)}. " if short else "")
            + "This scale can show the ordering of the rows after one equal, short retraining: whether frozen "
            "single-image conv1–2 let the layers above them learn more than random ones and how close to "
            "supervised ones they come, and whether fine-tuning from them trains as well as from scratch. It "
            "cannot show converged accuracies, the paper's absolute numbers (other data, network and input size), "
            f"the BiGAN and DeepCluster rows (the paper's only), or differences below the run-to-run noise "
            f"({noise_txt}).\n")


def span(values: list, fmt: str) -> str:
    """``a–b`` over the values, one number when they are all equal."""
    if not values:
        return "–"
    lo, hi = f"{min(values):{fmt}}", f"{max(values):{fmt}}"
    return lo if lo == hi else f"{lo}–{hi}"


def figures_md(cfg: FinetuneConfig, plan: Plan, stem: str) -> str:
    """The figures' section, from the JSON each figure command wrote beside its PNG."""
    style = read_json(os.path.splitext(plan.figures.get("fig3", ""))[0] + ".json")
    parts = []
    if style:
        c = style["config"]
        runs = "; ".join(f"{r['checkpoint']['method']}: loss {r['losses']['start']['total']:.3g} → "
                         f"{r['losses']['end']['total']:.3g} in {r['losses']['evaluations']} evaluations"
                         for r in style["runs"])
        parts += [f"### Fig. 3: style transfer\n\n![Fig. 3]({stem}-fig3.png)\n",
                  f"`probe.style`: content `{os.path.basename(style['content']['path'])}`, style "
                  f"`{os.path.basename(style['style']['path'])}`, {c['size']} px, content layers "
                  f"{','.join(c['content_layers'])}, style layers {','.join(style['runs'][0]['style_layers'])}, "
                  f"{c['steps']} L-BFGS evaluations, {c['loss_scale']} losses (docs/figures.md); {runs}.\n"]
    rows = []
    for key in [k for k in plan.figures if k.startswith("max-")]:
        layer = key.removeprefix("max-")
        mx = read_json(os.path.splitext(plan.figures[key])[0] + ".json")
        top = read_json(os.path.splitext(plan.figures[f"top-{layer}"])[0] + ".json")
        if mx and top:
            rows.append(f"| {layer} | {','.join(map(str, mx['units']))} | {mx['config']['steps']} steps, "
                        f"{mx['config']['size']} px | top {top['config']['top']} of {top['images']:,} images, "
                        f"{top['image_side']} px |")
    if rows:
        parts += [f"### Fig. 5: units of {cfg_label(plan)}\n\n![Fig. 5]({stem}-fig5.png)\n",
                  "Left: activation maximisation (`probe.visualize maximize`); right: the images of "
                  "CIFAR-10 test that excite the unit most (`retrieve`). Units drawn at random from the seed.\n",
                  "| layer | units | maximisation | retrieval |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"]
    return "\n".join(parts) if parts else "_no figure has finished yet_\n"


def cfg_label(plan: Plan) -> str:
    src = next((r.source for r in plan.table4 if r.source is not None and r.source.kind == "single"), None)
    return f"{src.label} ({src.trained_on})" if src else "the single-image model"


def time_md(records: dict[str, dict]) -> str:
    total = sum(r["seconds"] for r in records.values())
    return ("| step | seconds | commit |\n|---|---:|---|\n"
            + "".join(f"| {k} | {r['seconds']:.0f} | {r.get('commit', 'not recorded')} |\n" for k, r in records.items())
            + f"| **total** | **{total:.0f}** ({total / 60:.1f} min) | |\n")


def compose_fig5(plan: Plan, path: str) -> bool:
    """One PNG laid out like Fig. 5: a row per layer, activation maximisation left, top images right."""
    from PIL import Image

    layers = [k.removeprefix("max-") for k in plan.figures if k.startswith("max-")]
    pairs = [(plan.figures[f"max-{ly}"], plan.figures[f"top-{ly}"]) for ly in layers]
    if not pairs or not all(os.path.isfile(a) and os.path.isfile(b) for a, b in pairs):
        return False
    rows = []
    for a, b in pairs:
        left, right = (np.asarray(Image.open(p).convert("RGB")) for p in (a, b))
        h = max(left.shape[0], right.shape[0])
        rows.append(np.concatenate([_pad(left, h, left.shape[1]), _pad(right, h, right.shape[1])], axis=1))
    w = max(r.shape[1] for r in rows)
    from augment.files import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate([_pad(r, r.shape[0], w) for r in rows], axis=0)).save(tmp, format="PNG")
    return True


def _pad(img: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.full((h, w, 3), 255, np.uint8)
    out[:img.shape[0], :img.shape[1]] = img
    return out


def write_results(cfg: FinetuneConfig, plan: Plan, records: dict[str, dict]) -> None:
    """The results page (and the figures beside it) from every result that exists so far."""
    from augment.files import write_text_atomic

    m4, m5 = collect(plan)
    spread = noise(m4)
    stem = os.path.splitext(os.path.basename(cfg.out))[0]
    docs = os.path.dirname(os.path.abspath(cfg.out))
    os.makedirs(docs, exist_ok=True)
    if os.path.isfile(plan.figures.get("fig3", "")):
        shutil.copyfile(plan.figures["fig3"], os.path.join(docs, f"{stem}-fig3.png"))
    compose_fig5(plan, os.path.join(docs, f"{stem}-fig5.png"))
    parts = [
        "# Tables 4 and 5 at reduced scale on the CPU\n",
        f"Written by `make repro-finetune-cpu` (`python -m probe.finetune`) at commit `{git_rev()}` on {machine()}, "
        f"{time.strftime('%Y-%m-%d')}; the commit that ran each step is in the Time table. Every number and "
        f"protocol fact below is read from what the runs recorded. Choices: `docs/finetune.md`.\n",
        "## Table 4 layout: conv1–2 frozen, the rest retrained (top-1 of the retrained network)\n",
        table4_md(m4), protocol4(m4), "### Reading\n", reading4(m4),
        "## Table 5 layout: conv1–2 from a single-image model, everything fine-tuned, then linear probes\n",
        table5_md(m5), protocol5(m5), "### Reading\n", reading5(m5, spread),
        "## What this scale can and cannot show\n", scale_md(m4, m5, spread),
        "## Training done within the budget\n", training_md(m4 + m5),
    ]
    if cfg.figures:
        parts += ["## Figures 3 and 5 from the same checkpoints\n", figures_md(cfg, plan, stem)]
    parts += ["## Time\n", time_md(records),
              "## Configuration\n", "```json\n" + json.dumps(asdict(cfg), indent=1, sort_keys=True) + "\n```\n"]
    write_text_atomic(cfg.out, "\n".join(parts))


def prepare_plan(cfg: FinetuneConfig, trained_by: ReproConfig | None = None) -> tuple[Plan, list[Source]]:
    """Check every input (nothing runs before they are known to be good) and lay out the steps; the
    default checkpoints are those ``trained_by`` (a probe.repro run; else its defaults) trains."""
    if cfg.figures:
        for opt, name in (("--content", cfg.content), ("--style", cfg.style)):
            if not os.path.isfile(image_path(cfg, name)):
                raise click.ClickException(f"{opt} {name}: no such image (looked in --images {cfg.images}); give a "
                                           f"path, or --no-figures")
    rcfg = repro_config(cfg)
    data = cifar_root(rcfg)
    sources = resolve_sources(cfg, trained_by or rcfg, data)
    controls = control_sources(cfg, sources)
    plan = make_plan(cfg, data, sources, controls)
    runs = [r.run for r in plan.table4 + plan.table5]
    if len(set(runs)) != len(runs):
        raise click.ClickException("two labels give the same run folder name; give the checkpoints distinct labels")
    return plan, controls


def run_finetune(cfg: FinetuneConfig, trained_by: ReproConfig | None = None) -> tuple[list[Measured], list[Measured]]:
    """Run (or resume) both tables and the figures, and write the results page; returns the rows measured."""
    plan, controls = prepare_plan(cfg, trained_by)
    rcfg = repro_config(cfg)
    records = {f"init {c.label}": write_control(c, cfg.seed) for c in controls}
    for i, (name, argv) in enumerate(plan.steps, 1):
        records[name] = step(rcfg, name, argv, f"[{i}/{len(plan.steps)}]")
        if name.startswith(("table4 top-1", "table5 probe")):   # the page follows the results as they come
            write_results(cfg, plan, records)
    write_results(cfg, plan, records)
    return collect(plan)


# --------------------------------------------------------------------------- CLI


def parse_checkpoint(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if not sep or not label.strip() or not path.strip():
        raise click.BadParameter(f"{text!r}: give LABEL=PATH, e.g. 'MonoGAN=runs/repro-cpu/runs/monogan/checkpoint.pt'")
    return label.strip(), path.strip()


D = FinetuneConfig()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--images", envvar="IMAGES", default=D.images, show_default=True,
              help="Folder with the paper's images (Fig. 3's content and style). Env: IMAGES.")
@click.option("--cifar", envvar="CIFAR", default=D.cifar, show_default=True,
              help="CIFAR-10 JPEG tarball or ImageFolder with train/ and test/. Env: CIFAR.")
@click.option("--work", default=D.work, show_default=True, help="Working folder, shared with probe.repro (resumable).")
@click.option("--out", default=D.out, show_default=True, help="Results Markdown (figures beside it).")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="LABEL=PATH",
              callback=lambda ctx, param, value: tuple(parse_checkpoint(v) for v in value),
              help="A single-image model (repeatable). Default: probe.repro's single-image runs in --work.")
@click.option("--supervised", default=D.supervised, help="Full sup. checkpoint. Default: probe.repro's.")
@click.option("--random", "random_", default=D.random, help="Random checkpoint. Default: probe.repro's.")
@click.option("--retrain-steps", default=D.retrain_steps, show_default=True, type=click.IntRange(0))
@click.option("--retrain-minutes", default=D.retrain_seconds / 60, show_default=True, type=click.FloatRange(0),
              help="Table 4: time cap per conv1-2 row (0: none).")
@click.option("--scattering-minutes", default=D.scattering_seconds / 60, show_default=True, type=click.FloatRange(0))
@click.option("--finetune-steps", default=D.finetune_steps, show_default=True, type=click.IntRange(0))
@click.option("--finetune-minutes", default=D.finetune_seconds / 60, show_default=True, type=click.FloatRange(0))
@click.option("--probe-epochs", default=D.probe_epochs, show_default=True, type=click.IntRange(1))
@click.option("--probe-jobs", default=D.probe_jobs, show_default=True, type=click.IntRange(1))
@click.option("--schedule", default=D.schedule, type=click.Choice(["paper", "released"]), show_default=True)
@click.option("--batch-size", default=D.batch_size, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=D.workers, show_default=True, type=click.IntRange(0))
@click.option("--seed", default=D.seed, show_default=True, type=click.IntRange(0))
@click.option("--seed-row/--no-seed-row", default=D.seed_row, show_default=True,
              help="Retrain Table 4's Random row and Table 5's Full sup. row with seed + 1 too (the noise "
                   "yardsticks).")
@click.option("--spec-controls/--no-spec-controls", default=D.spec_controls, show_default=True,
              help="Random / from-scratch rows with each single-image model's network.")
@click.option("--figures/--no-figures", default=D.figures, show_default=True, help="Fig. 3 and Fig. 5.")
@click.option("--content", default=D.content, show_default=True)
@click.option("--style", default=D.style, show_default=True)
@click.option("--style-steps", default=D.style_steps, show_default=True, type=click.IntRange(1))
@click.option("--style-size", default=D.style_size, show_default=True, type=click.IntRange(16))
@click.option("--maximize-steps", default=D.maximize_steps, show_default=True, type=click.IntRange(1))
@click.option("--maximize-size", default=D.maximize_size, show_default=True, type=click.IntRange(16))
@click.option("--device", default=D.device, show_default=True)
def cli(checkpoints, random_, retrain_minutes, scattering_minutes, finetune_minutes, **kw) -> None:
    """Tables 4 and 5 (and Figs. 3, 5) at reduced scale: retrain / fine-tune from conv1-2, probe, report."""
    cfg = FinetuneConfig(checkpoints=checkpoints, random=random_,
                         retrain_seconds=retrain_minutes * 60, scattering_seconds=scattering_minutes * 60,
                         finetune_seconds=finetune_minutes * 60, **kw)
    labels = [label for label, _ in cfg.checkpoints]
    if len(set(labels)) != len(labels):
        raise click.ClickException(f"--checkpoint: the label {next(l for l in labels if labels.count(l) > 1)!r} is "
                                   f"given twice; give each model its own label")
    t0 = time.time()
    m4, m5 = run_finetune(cfg)
    click.echo(f"wrote {cfg.out} ({sum(m.value is not None for m in m4)} Table 4 rows, "
               f"{sum(m.value is not None for m in m5)} Table 5 rows) in {(time.time() - t0) / 60:.1f} min", err=True)


if __name__ == "__main__":
    cli()
