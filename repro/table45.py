"""Tables 4 and 5 at reduced scale (``python -m repro table45``, ``make repro-finetune-cpu``), and Figs. 3 and 5.

* **Table 4**: the small encoder retrained on CIFAR-10 with conv1-2 frozen, conv1-2 taken from each source
  checkpoint (``train.supervised --init-from CKPT --init-layers conv1,conv2 --freeze conv1,conv2``) or
  replaced by the Scattering transform (``--frontend scattering``); top-1 on CIFAR-10 test (``probe.top1``,
  which also proves the frozen blocks did not move). The Scattering frontend trains a 1x1 adapter that
  the conv rows lack, so a control row, Random conv1-2 with the same adapter (``--adapter``), measures
  what the adapter alone adds.
* **Table 5**: conv1-2 from each single-image model, the whole network fine-tuned, then linear probes on
  every conv layer, beside the same network trained from scratch.
* **Figures**: Fig. 3 and Fig. 5 from the first single-image model (``repro.figures``).

Every row trains ``--seeds`` seeds; seed k retrains from its source's seed-k checkpoint where the source
has one (Table 3's runs), so a row's spread holds the pre-training's noise and the retraining's. The
sources default to Table 3's checkpoints in the same work folder. A packed dataset (RotNet on CIFAR-10)
is the full-data reference, never a single-image row.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

import click

from probe.paper import TABLE4, TABLE5
from repro import figures, records, report, table3
from repro.config import FinetuneConfig, ReproConfig
from repro.stats import Spread, direction, per_layer, spread
from repro.steps import Step, cifar_root, commit, run_with_page, slug

LAYERS5 = ["conv1", "conv2", "conv3", "conv4", "conv5"]     # the paper's Table 5 columns
BLOCKS = "conv1,conv2"
# The paper's row a source's method is set beside (the paper has no MonoGAN row: BiGAN is its GAN).
PAPER_ROW = {"supervised": "full-sup", "random": "random", "scattering": "scattering", "monogan": "bigan-a",
             "bigan": "bigan-a", "rotnet": "rotnet-a", "deepcluster": "deepcluster-a"}
ADAPTER = "Random + adapter"


@dataclass(frozen=True)
class Source:
    """Checkpoints whose conv1-2 a row uses: one per seed (or one for every seed)."""

    label: str
    paths: tuple[str, ...]
    kind: str            # supervised | random | single | reference | control
    spec: dict
    method: str
    trained_on: str      # what its conv1-2 learned from, read from the checkpoint (and its set / log)

    def path(self, k: int) -> str:
        """The checkpoint for the k-th seed: its own where there is one, else the only one."""
        return self.paths[k] if k < len(self.paths) else self.paths[0]


@dataclass(frozen=True)
class Row:
    table: str           # "4" or "5"
    label: str
    paper: str           # key of TABLE4 / TABLE5, or ""
    source: Source | None
    ref: str = ""        # the row it is compared with in the reading (same network, random conv1-2)
    frontend: str = ""   # "scattering" | "adapter" | ""


@dataclass
class Measured:
    """A row's result over the seeds that finished: Table 4 a top-1 spread, Table 5 one per layer."""

    row: Row
    value: Spread | list[Spread | None] | None
    runs: list[dict]       # records.run_facts() of each seed's run
    results: list[dict]    # top1.json / probe.json of each seed


def ft_dir(cfg: FinetuneConfig, *parts: str) -> str:
    return os.path.join(cfg.work, "finetune", *parts)


def repro_config(cfg: FinetuneConfig) -> ReproConfig:
    """The Table 3 config whose probes and folders this pipeline shares (fp32: every command's own --amp; the
    bf16 check covered pre-training and probes, not a retraining from frozen blocks)."""
    return ReproConfig(images=cfg.images, cifar=cfg.cifar, work=cfg.work, probe_epochs=cfg.probe_epochs,
                       probe_jobs=cfg.probe_jobs, schedule=cfg.schedule, batch_size=cfg.batch_size,
                       workers=cfg.workers, seed=cfg.seed, seeds=cfg.seeds, device=cfg.device, amp="default",
                       channels_last=False)


def from_repro(rcfg: ReproConfig, **overrides) -> FinetuneConfig:
    """The config for Table 3's command to run this pipeline on its own work folder, data, seeds and device."""
    return FinetuneConfig(**({"images": rcfg.images, "cifar": rcfg.cifar, "work": rcfg.work, "seed": rcfg.seed,
                              "seeds": rcfg.seeds, "workers": rcfg.workers, "device": rcfg.device,
                              "probe_jobs": rcfg.probe_jobs, "batch_size": rcfg.batch_size} | overrides))


# --------------------------------------------------------------------------- sources


def describe(ck: dict, path: str) -> str:
    """What a checkpoint's encoder learned from, as its config, shard set manifest and log record it."""
    from augment.manifest import read_manifest

    method, conf = ck.get("method", "?"), ck.get("config") or {}
    if method == "random":
        return "no training (random init)"
    if conf.get("shards"):
        try:
            m = read_manifest(conf["shards"])
        except (click.ClickException, OSError, ValueError, KeyError):
            return f"{method} on {conf['shards']}"
        if records.packed(m.config):
            return f"{method} on {m.count:,} images of a dataset, packed unchanged (full data)"
        names = [f"Image {s['named']}" if s.get("named") else str(s.get("name")) for s in m.sources]
        what = ", ".join(names) if len(names) <= 3 else f"{len(names):,} images"
        return f"{method} on {what} ({m.count:,} patches of {m.size} px)"
    if conf.get("data"):
        n = records.run_data(os.path.dirname(path)).get("train")
        return f"{method} on the labels of {os.path.basename(conf['data'].rstrip('/'))}" + (f" ({n:,} images)" if n else "")
    return method


def load_source(label: str, paths: list[str], kind: str, option: str) -> Source:
    """Checkpoints this pipeline can take conv1-2 from (the small encoder's); else one line naming them."""
    from train.checkpoint import load_checkpoint
    from train.supervised import Config as SupConfig, initial_spec

    cks = []
    for path in paths:
        if not os.path.exists(path):
            raise click.ClickException(f"{option} {path}: no such checkpoint; run `make repro-cpu` first, or give "
                                       f"the checkpoint with {option}")
        ck = load_checkpoint(path)
        arch = (ck.get("encoder_spec") or {}).get("arch")
        if arch != "small":
            raise click.ClickException(f"{option} {path}: holds a {arch!r} encoder; Tables 4 and 5 at reduced "
                                       f"scale retrain the small encoder on CIFAR-10: give a --arch small checkpoint")
        try:
            spec, _ = initial_spec(SupConfig(arch="small", init_from=path))
        except click.ClickException as e:
            raise click.ClickException(f"{option} {label}: {e.message}") from None
        cks.append((ck, spec))
    ck, spec = cks[0]
    if kind == "single" and not records.is_single_image(ck):
        kind = "reference"
    return Source(label, tuple(paths), kind, asdict(spec), str(ck.get("method")), describe(ck, paths[0]))


def resolve_sources(cfg: FinetuneConfig, rcfg: ReproConfig) -> dict[str, list[Source]]:
    """The supervised, random, single-image and full-data reference checkpoints: as given, else every seed
    of Table 3's runs in the work folder."""
    specs = {s.label: s for s in table3.row_specs(rcfg)}

    def repro_paths(label: str) -> list[str]:
        return [os.path.join(table3.run_dir(rcfg, label, s), "checkpoint.pt") for s in rcfg.seed_list()]

    sup = load_source("Full sup.", [cfg.supervised] if cfg.supervised else repro_paths(table3.SUPERVISED),
                      "supervised", "--supervised")
    rand = load_source("Random", [cfg.random] if cfg.random else repro_paths(table3.RANDOM), "random", "--random")
    given = cfg.parsed_checkpoints()
    models = [load_source(label, [path], "single", "--checkpoint") for label, path in given]
    if not given:
        models = [load_source(s.label, repro_paths(s.label), "single", "--checkpoint")
                  for s in specs.values() if s.method not in ("supervised", "random")]
    singles = [m for m in models if m.kind == "single"]
    if not singles:
        raise click.ClickException("no single-image model to retrain from; give --checkpoint LABEL=PATH")
    return {"supervised": [sup], "random": [rand], "single": singles,
            "reference": [m for m in models if m.kind == "reference"]}


def network(spec: dict) -> tuple:
    """What, besides conv1-2's weights, a retraining inherits from the checkpoint's encoder spec."""
    return spec.get("norm"), spec.get("act"), spec.get("sobel")


def network_name(spec: dict) -> str:
    if not spec:
        return "–"
    norm = {"bn": "BatchNorm", "none": "no normalisation", "layer": "LayerNorm"}.get(spec.get("norm"), spec.get("norm"))
    act = {"relu": "ReLU", "leaky": "leaky ReLU"}.get(spec.get("act"), spec.get("act"))
    return f"{norm}, {act}" + (", Sobel" if spec.get("sobel") else "") + (", 1x1 adapter" if spec.get("adapter") else "")


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
        name = slug("-".join(str(v) for v in net))
        paths = tuple(ft_dir(cfg, "init", f"random-{name}-seed{s}", "checkpoint.pt") for s in cfg.seed_list())
        out.append(Source(f"Random, {network_name(src.spec)}", paths, "control", src.spec, "random",
                          "no training (random init)"))
    return out


def write_control(src: Source, seeds: list[int]) -> dict:
    """Write (once per seed) a random encoder of ``src.spec`` as train.random would; returns its step record."""
    import torch
    from train.checkpoint import load_checkpoint
    from train.models import EncoderSpec, build_encoder
    from train.random_init import Config as RandomConfig
    from train.run import write_bare_checkpoint

    t0, commits = time.time(), set()
    for path, seed in zip(src.paths, seeds):
        if os.path.isfile(path):
            ck = load_checkpoint(path)
            if ck["encoder_spec"] != src.spec:
                raise click.ClickException(f"{path} holds another network than {network_name(src.spec)}; delete it")
            commits.add(str(ck.get("git") or "not recorded")[:7])  # the commit that wrote it, not this re-run's
            continue
        commits.add(commit())
        torch.manual_seed(seed)     # as train.random: the encoder's weights depend on the seed alone
        write_bare_checkpoint(path, method="random", cfg=RandomConfig(out=os.path.dirname(path), seed=seed,
                                                                       arch=src.spec["arch"]),
                              encoder=build_encoder(EncoderSpec.from_dict(src.spec)),
                              extra={"init": "kaiming_normal fan_out", "network": src.spec})
    return {"name": f"init {src.label}", "argv": ["(in process)", json.dumps(src.spec, sort_keys=True)],
            "seconds": time.time() - t0, "commit": ", ".join(sorted(commits))}


# --------------------------------------------------------------------------- the plan


def ref_label(src: Source | None, controls: list[Source], base: str) -> str:
    """The row a single-image row is compared with: the random encoder of its own network."""
    if src is None or src.kind not in ("single", "reference"):
        return ""
    same = [c for c in controls if network(c.spec) == network(src.spec)]
    return same[0].label.replace("Random", base, 1) if same else base


def table4_rows(cfg: FinetuneConfig, sources: dict[str, list[Source]], controls: list[Source]) -> list[Row]:
    """Full sup., Random, the network controls, Random + adapter, Scattering, the single-image models, and the
    full-data references."""
    rand = sources["random"][0]
    rows = [Row("4", "Full sup.", "full-sup", sources["supervised"][0]), Row("4", "Random", "random", rand)]
    rows += [Row("4", c.label, "", c) for c in controls]
    if cfg.adapter_control:
        rows.append(Row("4", ADAPTER, "", rand, frontend="adapter"))
    rows.append(Row("4", "Scattering", "scattering", None, ref=ADAPTER if cfg.adapter_control else "",
                    frontend="scattering"))
    for s in sources["single"] + sources["reference"]:
        rows.append(Row("4", s.label, PAPER_ROW.get(s.method, "") if s.kind == "single" else "", s,
                        ref_label(s, controls, "Random")))
    return rows


def table5_rows(sources: dict[str, list[Source]], controls: list[Source]) -> list[Row]:
    """Trained from scratch (each network), then conv1-2 from each single-image model, all fine-tuned."""
    rows = [Row("5", "Full sup.", "full-sup", None)]
    rows += [Row("5", c.label.replace("Random", "Full sup.", 1), "full-sup", c) for c in controls]
    rows += [Row("5", s.label, PAPER_ROW.get(s.method, "") if s.kind == "single" else "", s,
                 ref_label(s, controls, "Full sup.")) for s in sources["single"] + sources["reference"]]
    return rows


def run_dir(cfg: FinetuneConfig, row: Row, seed: int) -> str:
    return ft_dir(cfg, "runs", f"table{row.table}-{slug(row.label)}-seed{seed}")


def result_path(cfg: FinetuneConfig, row: Row, seed: int) -> str:
    if row.table == "4":
        return ft_dir(cfg, "top1", f"{slug(row.label)}-seed{seed}.json")
    return ft_dir(cfg, "probes", f"table5-{slug(row.label)}-seed{seed}")


def retrain_argv(cfg: FinetuneConfig, data: str, out: str, seed: int, init: str = "", freeze: bool = False,
                 frontend: str = "", table: str = "4") -> list[str]:
    """``train.supervised`` on CIFAR-10 train: conv1-2 from ``init`` (frozen with ``freeze``), the scattering
    frontend, or the adapter control; the table's step budget, its wall-clock cap as a safety net."""
    argv = ["train.supervised", "--dataset", "imagefolder", "--data", data, "--arch", "small",
            "--batch-size", str(cfg.batch_size)]
    argv += ["--init-from", init, "--init-layers", BLOCKS] if init else []
    argv += ["--freeze", BLOCKS] if freeze else []
    argv += ["--frontend", "scattering"] if frontend == "scattering" else []
    argv += ["--adapter"] if frontend == "adapter" else []
    steps = cfg.retrain_steps if table == "4" else cfg.finetune_steps
    minutes = (cfg.scattering_minutes if frontend == "scattering" else cfg.retrain_minutes) if table == "4" \
        else cfg.finetune_minutes
    return argv + table3.train_flags(repro_config(cfg), out, seed, steps, minutes)


def top1_argv(cfg: FinetuneConfig, data: str, run: str, out: str, frozen_from: str = "") -> list[str]:
    argv = ["probe.top1", "--checkpoint", os.path.join(run, "checkpoint.pt"), "--data", data, "--out", out,
            "--device", cfg.device, "--workers", str(cfg.workers)]
    return argv + (["--frozen-from", frozen_from, "--frozen", BLOCKS] if frozen_from else [])


def row_steps(cfg: FinetuneConfig, data: str, row: Row) -> list[Step]:
    """Every seed of one row: its retraining (or fine-tuning), then its top-1 (or linear probes)."""
    out = []
    for k, seed in enumerate(cfg.seed_list()):
        run, res, name = run_dir(cfg, row, seed), result_path(cfg, row, seed), f"{row.label}, seed {seed}"
        init = row.source.path(k) if row.source else ""
        if row.table == "4":
            frozen = "" if row.frontend == "scattering" else init
            out.append(Step(f"table4 retrain {name}", tuple(retrain_argv(
                cfg, data, run, seed, frozen, bool(frozen), row.frontend)), (run,)))
            out.append(Step(f"table4 top-1 {name}", tuple(top1_argv(cfg, data, run, res, frozen)), (res,)))
        else:
            out.append(Step(f"table5 fine-tune {name}", tuple(retrain_argv(cfg, data, run, seed, init, table="5")),
                            (run,)))
            out.append(table3.probe_step(repro_config(cfg), f"table5 probe {name}",
                                         os.path.join(run, "checkpoint.pt"), res, data))
    return out


def image_path(cfg: FinetuneConfig, name: str) -> str:
    return name if os.path.isfile(name) else os.path.join(cfg.images, name)


@dataclass
class Plan:
    steps: list[Step]
    table4: list[Row]
    table5: list[Row]
    figures: dict[str, str]      # figure part -> its PNG in the work folder
    model: str                   # the single-image model the figures show, in words


def make_plan(cfg: FinetuneConfig, data: str, sources: dict[str, list[Source]], controls: list[Source]) -> Plan:
    """Every step of both tables (and the figures), in order."""
    t4, t5 = table4_rows(cfg, sources, controls), table5_rows(sources, controls)
    steps = [s for row in t4 + t5 for s in row_steps(cfg, data, row)]
    pngs, single = {}, sources["single"][0]
    if cfg.figures:
        fig_steps, pngs = figures.steps(cfg, ft_dir(cfg, "figures"), data, single.path(0), single.spec["arch"],
                                        sources["supervised"][0].path(0), image_path(cfg, cfg.content),
                                        image_path(cfg, cfg.style))
        steps += fig_steps
    runs = [run_dir(cfg, r, s) for r in t4 + t5 for s in cfg.seed_list()]
    if len(set(runs)) != len(runs):
        raise click.ClickException("two labels give the same run folder name; give the checkpoints distinct labels")
    return Plan(steps, t4, t5, pngs, f"{single.label} ({single.trained_on}, seed {cfg.seed})")


# --------------------------------------------------------------------------- rows


def collect(cfg: FinetuneConfig, plan: Plan) -> tuple[list[Measured], list[Measured]]:
    """Every row's measured spread over the seeds whose result exists, with what their runs recorded."""
    m4, m5 = [], []
    for row in plan.table4:
        res = [records.read_json(result_path(cfg, row, s)) for s in cfg.seed_list()]
        done = [(r, records.run_facts(run_dir(cfg, row, s))) for r, s in zip(res, cfg.seed_list()) if r]
        m4.append(Measured(row, spread(r.get("top1") for r, _ in done), [f for _, f in done if f], [r for r, _ in done]))
    for row in plan.table5:
        done = [(s, records.probe_facts(result_path(cfg, row, s))) for s in cfg.seed_list()]
        done = [(s, p) for s, p in done if p]
        accs = [records.layer_accuracies(result_path(cfg, row, s), LAYERS5) for s, _ in done]
        m5.append(Measured(row, per_layer(accs) if accs else None,
                           [f for s, _ in done if (f := records.run_facts(run_dir(cfg, row, s)))], [p for _, p in done]))
    return m4, m5


# --------------------------------------------------------------------------- the page


def row_name(m: Measured) -> str:
    r = m.row
    if r.frontend == "scattering":
        from train.scattering import J_DEFAULT, L_DEFAULT

        what = f"fixed Morlet scattering, J = {J_DEFAULT}, L = {L_DEFAULT}, and a learned 1×1 adapter"
    elif r.frontend == "adapter":
        what = "random, frozen, and the Scattering row's learned 1×1 adapter after conv2 (the adapter control)"
    elif r.source is None:
        what = "random (trained from scratch)"
    elif r.table == "4":
        what = r.source.trained_on
    else:
        what = "conv1–2 random" if r.source.kind == "control" else f"conv1–2 from {r.source.trained_on}"
    if r.source is not None and r.source.kind == "reference":
        what += "; the full-data reference, not a single-image row"
    return f"**{r.label}**: {what}"


def _paper4(key: str, label: str) -> str:
    prow = TABLE4.get(key)
    return "–" if prow is None else f"{prow.columns['imagenet'][0]:.1f}" + ("" if prow.label == label else f" ({prow.label})")


def table4_md(m4: list[Measured]) -> str:
    """Table 4's layout (one top-1 column): ours over the seeds, the paper's value beside it."""
    lines = ["| conv1–2 (what they were trained on) | network | seeds | top-1 (ours) | top-1 (paper) |",
             "|---|---|---:|---:|---:|"]
    for m in m4:
        spec = (m.runs[0]["spec"] if m.runs else m.row.source.spec if m.row.source else {})
        n = m.value.n if isinstance(m.value, Spread) else 0
        lines.append(f"| {row_name(m)} | {network_name(spec)} | {n} | {report.cell(m.value)} | "
                     f"{_paper4(m.row.paper, m.row.label)} |")
    return "\n".join(lines) + "\n"


def table5_md(m5: list[Measured]) -> str:
    """Table 5's layout (c1..c5): ours over the seeds and the paper's value side by side per layer."""
    head = "| conv1–2 | seeds | " + " | ".join(f"c{i + 1} (ours) | c{i + 1} (paper)" for i in range(len(LAYERS5))) + " |"
    lines = [head, "|---|---:|" + "---:|---:|" * len(LAYERS5)]
    for m in m5:
        prow = TABLE5.get(m.row.paper)
        ours = m.value or [None] * len(LAYERS5)
        theirs = prow.columns["imagenet"] if prow else [None] * len(LAYERS5)
        name = row_name(m) + ("" if prow is None or prow.label == m.row.label else f" [paper: {prow.label}]")
        lines.append(f"| {name} | {len(m.results)} | " + " | ".join(f"{report.cell(a)} | {report.fmt(p)}"
                                                                    for a, p in zip(ours, theirs)) + " |")
    return "\n".join(lines) + "\n"


def vs(a: Spread, b: Spread) -> str:
    return f"{round(a.mean - b.mean, 1) + 0.0:+.1f} ({direction(a, b)})"


def reading4(m4: list[Measured]) -> list[str]:
    """What Table 4 says (§4.4: single-image conv1-2 close to supervised, Scattering slightly below them),
    every direction from the seed spreads."""
    vals = {m.row.label: m.value for m in m4 if isinstance(m.value, Spread)}
    sup, rand = vals.get("Full sup."), vals.get("Random")
    if sup is None or rand is None:
        return ["- Full sup. and Random have not both finished: no reading yet."]
    p = {k: r.columns["imagenet"][0] for k, r in TABLE4.items()}
    out = [f"- Full sup. − Random: {vs(sup, rand)} (paper {p['full-sup'] - p['random']:+.1f})."]
    for m in m4:
        src = m.row.source
        if src is None or src.kind not in ("single", "reference") or not isinstance(m.value, Spread):
            continue
        ref = vals.get(m.row.ref or "Random", rand)
        what = "single-image" if src.kind == "single" else "full-data reference"
        out.append(f"- {m.row.label} ({what}): {m.value.text()}, {vs(m.value, ref)} vs {m.row.ref or 'Random'}, "
                   f"{vs(m.value, sup)} vs Full sup." + (f" Paper {TABLE4[m.row.paper].label}: "
                                                        f"{p[m.row.paper] - p['random']:+.1f} vs Random, "
                                                        f"{p[m.row.paper] - p['full-sup']:+.1f} vs Full sup."
                                                        if m.row.paper in TABLE4 else ""))
    scat, adapter = vals.get("Scattering"), vals.get(ADAPTER)
    if scat is not None:
        out.append(f"- Scattering − Full sup.: {vs(scat, sup)} (paper {p['scattering'] - p['full-sup']:+.1f}).")
        if adapter is not None:
            out.append(f"- The adapter: Random + adapter − Random {vs(adapter, rand)}; Scattering − Random + adapter "
                       f"{vs(scat, adapter)}. Scattering and Random + adapter train the same layers above "
                       f"conv2 (a 1×1 adapter, from 243 and from 256 channels, conv3, conv4 and the classifier), so "
                       f"the second difference is the fixed transform's own share; the other rows train no adapter.")
        for m in m4:
            if m.row.source is not None and m.row.source.kind == "single" and isinstance(m.value, Spread):
                out.append(f"- Scattering vs {m.row.label}: {vs(scat, m.value)} (paper: Scattering 49.2 below the "
                           f"single-image rows' 49.5–52.5; the rows without the adapter train fewer parameters).")
    out.append("- *above* / *below*: every seed of one row lies above / below every seed of the other; otherwise "
               "*within the seed spread*, and no direction is claimed. Every row retrains the same steps.")
    return out


def reading5(m5: list[Measured]) -> list[str]:
    """What Table 5 says (A.3: fine-tuned from single-image conv1-2, the network recovers full supervision)."""
    vals = {m.row.label: m.value for m in m5 if m.value}
    full = TABLE5["full-sup"].columns["imagenet"]
    out = []
    for m in m5:
        ref = vals.get(m.row.ref)
        if m.row.source is None or m.row.source.kind == "control" or not m.value or ref is None:
            continue
        diffs = [f"{LAYERS5[i]} {vs(a, b)}" for i, (a, b) in enumerate(zip(m.value, ref)) if a and b]
        prow = TABLE5.get(m.row.paper)
        paper = ("; paper (" + prow.label + " − Full sup.): " + " / ".join(
            f"{a - b:+.1f}" for a, b in zip(prow.columns["imagenet"], full))) if prow else ""
        out.append(f"- {m.row.label} − {m.row.ref}, per layer: " + ", ".join(diffs) + paper + ".")
    if not out:
        return ["- No fine-tuned model and its from-scratch reference have both finished: no reading yet."]
    return out + ["- The paper finds the fine-tuned network recovers full supervision; here a layer is said to "
                  "fall below only when every seed does (the small encoder has no conv5)."]


def training_md(ms: list[Measured]) -> str:
    lines = ["| run | steps | epochs | training seconds | stopped by | seed | network | precision |",
             "|---|---:|---:|---:|---|---:|---|---|"]
    for m in ms:
        for r in m.runs:
            stopped = r["stopped"] if r["stopped"] != "time cap" else \
                f"time cap at {r['steps']:,} of {r['config'].get('max_steps', 0):,} steps — not comparable"
            epochs = "–" if r["epochs"] is None else f"{r['epochs']:.2f}"
            lines.append(f"| Table {m.row.table}: {m.row.label} | {r['steps']:,} | {epochs} | {r['train_seconds']:.0f} | "
                         f"{stopped} | {r['config'].get('seed')} | {network_name(r['spec'])} | {r['precision']} |")
    return "\n".join(lines) + "\n"


def distinct(values: list) -> str:
    """One value, or the distinct values in order (rows that differ are listed in the training table)."""
    seen = list(dict.fromkeys(json.dumps(v, sort_keys=True) if isinstance(v, (list, dict))
                              else f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v for v in values))
    return str(seen[0]) if len(seen) == 1 else " / ".join(str(v) for v in seen)


def protocol4(m4: list[Measured]) -> str:
    """Table 4's protocol, from the retraining runs' log headers and the top-1 records."""
    runs = [r for m in m4 for r in m.runs]
    done = [r for m in m4 for r in m.results]
    if not runs or not done:
        return "_no Table 4 row has finished yet_\n"
    c = lambda k: distinct([r["config"].get(k) for r in runs])  # noqa: E731
    checked = sum(1 for r in done if r.get("frozen", {}).get("unchanged"))
    return (f"Each row runs `train.supervised` on the labels of `{os.path.basename(c('data').rstrip('/'))}` "
            f"({distinct([r['train'] for r in runs])} training images, {distinct([r['classes'] for r in runs])} "
            f"classes): {distinct([r['spec'].get('arch') for r in runs])} encoder, batch {c('batch_size')}, SGD lr "
            f"{c('lr')} (×0.1 at epochs {c('milestones')} of {c('epochs')}, as fractions of the step budget), momentum "
            f"{c('momentum')}, weight decay {c('weight_decay')}, seeds {c('seed')}, for {c('max_steps')} steps. "
            f"conv1–2 come from the row's checkpoint and stay frozen (Scattering: its transform has no weights); "
            f"conv3–4 and the classifier start from the seed's random initialisation. Top-1: `probe.top1` on the "
            f"{distinct([e.get('count') for e in done])} {distinct([e.get('split') for e in done])} images (centre "
            f"crops); for {checked} of {len(done)} runs it also checked that conv1–2 are bit-identical to the "
            f"checkpoint they came from.\n")


def protocol5(m5: list[Measured]) -> str:
    """Table 5's protocol, from the fine-tuning runs' log headers and the probes' probe.json."""
    runs, probes = [r for m in m5 for r in m.runs], [p for m in m5 for p in m.results]
    if not runs or not probes:
        return "_no Table 5 row has finished yet_\n"
    c = lambda k: distinct([r["config"].get(k) for r in runs])  # noqa: E731
    p = lambda k: distinct([r["config"].get(k) for r in probes])  # noqa: E731
    q = lambda k: distinct([r["resolved"].get(k) for r in probes])  # noqa: E731
    return (f"Each row runs `train.supervised` as in Table 4 (batch {c('batch_size')}, lr {c('lr')}, seeds "
            f"{c('seed')}) for {c('max_steps')} steps with nothing frozen: conv1–2 start from the row's checkpoint "
            f"(from scratch: random), the rest from the seed's random initialisation. Then `probe.linear` "
            f"({distinct([r.get('protocol') for r in probes])} protocol, pooling {q('pooling')}): {p('epochs')} "
            f"epochs, {p('schedule')} schedule (milestones {q('milestones')}), trained on {q('train_count')} and "
            f"evaluated on {q('eval_count')} images, final-epoch top-1. The small encoder has no conv5 (c5: –).\n")


def scale_md(m4: list[Measured], m5: list[Measured]) -> str:
    """What this scale can and cannot show, with the budgets the runs actually reached."""
    runs = [r for m in m4 + m5 for r in m.runs]
    if not runs:
        return ""
    steps = [r["steps"] for r in runs]
    epochs = [r["epochs"] for r in runs if r["epochs"] is not None]
    span = lambda v, f: "–" if not v else (f"{min(v):{f}}" if f"{min(v):{f}}" == f"{max(v):{f}}"  # noqa: E731
                                           else f"{min(v):{f}}–{max(v):{f}}")
    return (f"Every network here trained {span(steps, ',')} steps ({span(epochs, '.2f')} epochs of its training "
            f"images); the paper retrained AlexNet on ImageNet LSVRC-12 to convergence, so its columns are ImageNet "
            f"top-1 (Table 4) and ImageNet linear probes (Table 5), set beside ours for the pattern, not the "
            f"values. This scale can show the ordering of the rows after one equal, short retraining, outside "
            f"the seed spread; it cannot show converged accuracies, the paper's absolute numbers (other data, "
            f"network and input size), or the BiGAN and DeepCluster rows (the paper's only).\n")


def write_results(cfg: FinetuneConfig, plan: Plan, recs: dict[str, dict]) -> tuple[list[Measured], list[Measured]]:
    """The results page (and the figures beside it) from every result that exists so far."""
    m4, m5 = collect(cfg, plan)
    stem = os.path.splitext(os.path.basename(cfg.out))[0]
    docs = os.path.dirname(os.path.abspath(cfg.out))
    os.makedirs(docs, exist_ok=True)
    if os.path.isfile(plan.figures.get("fig3", "")):
        shutil.copyfile(plan.figures["fig3"], os.path.join(docs, f"{stem}-fig3.png"))
    figures.compose_fig5(plan.figures, os.path.join(docs, f"{stem}-fig5.png"))
    parts = report.header("Tables 4 and 5 at reduced scale on the CPU",
                          "`make repro-finetune-cpu` (`python -m repro table45`)", cfg.seed_list())
    parts += ["Choices: `docs/finetune.md`.\n",
              "## Table 4: conv1–2 frozen, the rest retrained (top-1 of the retrained network)\n",
              table4_md(m4), protocol4(m4), "### Reading\n", "\n".join(reading4(m4)) + "\n",
              "## Table 5: conv1–2 from a single-image model, everything fine-tuned, then linear probes\n",
              table5_md(m5), protocol5(m5), "### Reading\n", "\n".join(reading5(m5)) + "\n",
              "## What this scale can and cannot show\n", scale_md(m4, m5),
              "## Training done within the budget\n", training_md(m4 + m5)]
    if cfg.figures:
        parts += ["## Figures 3 and 5 from the same checkpoints\n", figures.section(plan.figures, stem, plan.model)]
    parts += ["## Time\n", report.time_table(recs), "## Configuration\n", report.configuration(cfg)]
    report.write_page(cfg.out, parts)
    return m4, m5


def prepare_plan(cfg: FinetuneConfig, trained_by: ReproConfig | None = None) -> tuple[Plan, list[Source]]:
    """Check every input (nothing runs before they are known to be good) and lay out the steps; the default
    checkpoints are those ``trained_by`` (a Table 3 run; else its defaults) trains."""
    if cfg.figures:
        for opt, name in (("--content", cfg.content), ("--style", cfg.style)):
            if not os.path.isfile(image_path(cfg, name)):
                raise click.ClickException(f"{opt} {name}: no such image (looked in --images {cfg.images}); give a "
                                           f"path, or --no-figures")
    rcfg = repro_config(cfg)
    data = cifar_root(cfg.cifar, cfg.work)
    sources = resolve_sources(cfg, trained_by or rcfg)
    controls = control_sources(cfg, sources)
    return make_plan(cfg, data, sources, controls), controls


def run(cfg: FinetuneConfig, trained_by: ReproConfig | None = None) -> tuple[list[Measured], list[Measured]]:
    """Run (or resume) both tables and the figures, and write the results page; returns the rows measured."""
    plan, controls = prepare_plan(cfg, trained_by)
    first = {f"init {c.label}": write_control(c, cfg.seed_list()) for c in controls}
    return run_with_page(cfg.work, plan.steps, cfg.images, lambda recs: write_results(cfg, plan, recs),
                         ("table4 top-1", "table5 probe"), first)
