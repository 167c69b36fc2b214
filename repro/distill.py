"""Single-image distillation at reduced scale (``python -m repro distill``, ``make repro-distill-cpu``).

The Augmented Image Prior's CIFAR-10 experiment (Asano & Saeed, ICLR 2023) on this tool's sets. The plan:
the teacher is Table 3's Fully supervised run (seed ``--seed``) in the same work folder, trained there with
Table 3's argv when it is absent; four sources of ``--count`` 32-px samples: CIFAR-10 train packed unchanged
(labels unused, the upper reference), Image B and Image A rendered with ``--preset cifar``, and a seeded noise
image of Image B's size rendered the same way (the lower reference). From each source and seed a small-encoder
student is distilled for the same step budget, in ``--stages`` stops (``--stop-at-step``, then ``--resume``:
the same run as an uninterrupted one), each scored on the 10,000 CIFAR-10 test images, so the page can plot
top-1 against steps. ``students`` reads back what finished; ``readings`` says what the seeds allow.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

from probe.paper import DISTILL_CIFAR10
from repro import records, report, table3
from repro.config import DistillConfig, ReproConfig
from repro.stats import ABOVE, Spread, direction, spread
from repro.steps import Step, cifar_root, run_with_page, slug

CHANCE = 10.0       # CIFAR-10: ten classes


@dataclass(frozen=True)
class Source:
    """What a student is distilled on: its label, its set's folder name and its role in the reading."""

    label: str
    key: str
    role: str


CIFAR10 = Source("CIFAR-10 train (packed, labels unused)", "cifar10-train", "upper reference: the teacher's own images")
NOISE = Source("Noise image", "noise-cifar", "lower reference: a source with no structure")


def image_name(image: str) -> str:
    """How a source image is named on the page: ``Image B`` for a named image, else the file's name."""
    return f"Image {image.upper()}" if image.upper() in ("A", "B", "C") else os.path.basename(image)


def sources(cfg: DistillConfig) -> tuple[Source, Source, Source, Source]:
    """CIFAR-10 (packed), the main image (Image B), the second image (Image A), the noise image."""
    main = Source(image_name(cfg.image), "B-cifar" if cfg.image == "B" else f"{slug(image_name(cfg.image))}-cifar",
                  "the paper's main source" if cfg.image.upper() == "B" else "the main single image")
    second = Source(image_name(cfg.second_image), f"{slug(image_name(cfg.second_image))}-cifar",
                    "a second single image")
    return CIFAR10, main, second, NOISE


@dataclass(frozen=True)
class Student:
    """One source's students: final top-1 (%) over the seeds, each seed's curve and its training facts."""

    source: Source
    top1: Spread | None
    seeds: tuple[int, ...]
    curves: dict[int, list[tuple[int, float]]]
    facts: tuple[records.TrainFacts | None, ...]


@dataclass(frozen=True)
class Teacher:
    """The teacher as the students' logs measured it (every student checks it; they must agree)."""

    path: str
    top1: float | None
    sha256: str | None
    agree: bool


def table3_config(cfg: DistillConfig) -> ReproConfig:
    """Table 3's config over the same work folder and common options: its sets and its teacher run are
    shared, step for step (the same argv, so a finished step is reused, a different one refused)."""
    shared = {k: getattr(cfg, k) for k in ("images", "cifar", "work", "seeds", "seed", "batch_size", "workers",
                                           "device", "count", "amp", "channels_last", "image")}
    return ReproConfig(**shared, steps=cfg.teacher_steps)


def set_dir(cfg: DistillConfig, source: Source) -> str:
    return os.path.join(cfg.work, "sets", source.key)


def noise_image(cfg: DistillConfig) -> str:
    return os.path.join(cfg.work, "data", f"noise-seed{cfg.noise_seed}.png")


def teacher_dir(cfg: DistillConfig) -> str:
    return table3.run_dir(table3_config(cfg), table3.SUPERVISED, cfg.seed)


def run_dir(cfg: DistillConfig, source: Source, seed: int) -> str:
    return os.path.join(cfg.work, "runs", f"distill-{slug(source.label)}-seed{seed}")


def stage_ends(cfg: DistillConfig) -> list[int]:
    """The steps at which each student stops and is scored: k / stages of the budget, the last its end."""
    return sorted({round(cfg.steps * k / cfg.stages) for k in range(1, cfg.stages + 1)})


def source_steps(cfg: DistillConfig, data: str) -> list[Step]:
    """The four sources' sets: Table 3's Image B and packed CIFAR-10 (shared), Image A, the noise image."""
    t3, (_, main, second, _) = table3_config(cfg), sources(cfg)
    w, h = cfg.noise_size
    return [table3.render_step(t3, f"render {main.label}", set_dir(cfg, main)),
            table3.pack_step(t3, data),
            table3.render_step(replace(t3, image=cfg.second_image), f"render {second.label}", set_dir(cfg, second)),
            Step("noise image", ("augment", "noise", "--out", noise_image(cfg), "--width", str(w), "--height", str(h),
                                 "--seed", str(cfg.noise_seed)), (noise_image(cfg),)),
            table3.render_step(replace(t3, image=noise_image(cfg)), "render the noise image", set_dir(cfg, NOISE))]


def student_steps(cfg: DistillConfig, source: Source, seed: int, data: str) -> list[Step]:
    """One student, as ``--stages`` stops of one run: each stage resumes the last one's checkpoint."""
    out, t3 = run_dir(cfg, source, seed), table3_config(cfg)
    argv = ["train.distill", "--shards", set_dir(cfg, source), "--teacher", teacher_dir(cfg), "--eval-data", data,
            "--eval-dataset", "imagefolder", "--student-arch", "small", "--recipe", "cifar", "--optimizer", "adam",
            "--lr", f"{cfg.lr:g}", "--weight-decay", "0", "--eps", "1e-7", "--batch-size", str(cfg.batch_size),
            *table3.train_flags(t3, out, seed, cfg.steps, cfg.student_minutes)]
    ends, steps = stage_ends(cfg), []
    for i, end in enumerate(ends):
        stop = ["--stop-at-step", str(end)] if end < cfg.steps else []
        steps.append(Step(f"distill {source.label}, seed {seed}, to step {end}",
                          tuple(argv + stop + (["--resume"] if i else [])), (out,)))
    return steps


def plan(cfg: DistillConfig, data: str) -> list[Step]:
    """The sets, the teacher (Table 3's step when it ran), then source by source every seed's student."""
    t3 = table3_config(cfg)
    supervised = next(s for s in table3.row_specs(t3) if s.label == table3.SUPERVISED)
    steps = source_steps(cfg, data) + [table3.row_steps(t3, supervised, cfg.seed, data)[0]]
    for source in sources(cfg):
        for seed in cfg.seed_list():
            steps += student_steps(cfg, source, seed, data)
    return steps


def curve(run: str) -> list[tuple[int, float]]:
    """(step, top-1 %) of every evaluation in a student's log, in step order (a stage's re-logged step once)."""
    points = {int(r["step"]): 100 * float(r["eval_top1"]) for r in records.read_jsonl(os.path.join(run, "log.jsonl"))
              if r.get("event") == "epoch" and "eval_top1" in r}
    return sorted(points.items())


def finished(cfg: DistillConfig, source: Source, seed: int) -> bool:
    f = records.train_facts(run_dir(cfg, source, seed))
    return f is not None and (f.steps >= cfg.steps or f.short) and bool(curve(run_dir(cfg, source, seed)))


def students(cfg: DistillConfig) -> list[Student]:
    """Every source with the seeds whose students finished their budget (or were stopped by the cap)."""
    out = []
    for source in sources(cfg):
        done = [s for s in cfg.seed_list() if finished(cfg, source, s)]
        curves = {s: curve(run_dir(cfg, source, s)) for s in done}
        facts = tuple(records.train_facts(run_dir(cfg, source, s)) for s in done)
        out.append(Student(source, spread(curves[s][-1][1] for s in done), tuple(done), curves, facts))
    return out


def teacher(cfg: DistillConfig) -> Teacher:
    """The teacher's top-1 and hash as every student logged them; ``agree`` is False if any two differ."""
    seen = {(round(100 * float(r["teacher_top1"]), 2), r.get("teacher_sha256"))
            for source in sources(cfg) for s in cfg.seed_list()
            for r in records.read_jsonl(os.path.join(run_dir(cfg, source, s), "log.jsonl"))
            if r.get("event") == "teacher" and "teacher_top1" in r}
    top1, sha = sorted(seen)[0] if seen else (None, None)
    return Teacher(teacher_dir(cfg), top1, sha, len(seen) <= 1)


def ratio(s: Spread | None, t: Teacher) -> str:
    return "–" if s is None or not t.top1 else f"{s.mean / t.top1:.2f}"


def readings(cfg: DistillConfig, rows: list[Student], t: Teacher) -> list[str]:
    """The ordering CIFAR-10 > Image B > noise, Image A beside Image B, chance; each as the seeds allow."""
    cifar, main, second, noise = sources(cfg)
    by = {r.source.key: r.top1 for r in rows}
    out = []
    for hi, lo in ((cifar, main), (main, noise), (second, main), (second, noise)):
        a, b = by.get(hi.key), by.get(lo.key)
        if a is not None and b is not None:
            out.append(f"- {hi.label} − {lo.label}: {round(a.mean - b.mean, 1) + 0.0:+.1f} ({direction(a, b)}).")
    order = [by.get(s.key) for s in (cifar, main, noise)]
    if all(o is not None for o in order):
        holds = direction(order[0], order[1]) == ABOVE and direction(order[1], order[2]) == ABOVE
        out.append(f"- The ordering CIFAR-10 > {main.label} > noise {'holds' if holds else 'is not shown'} outside "
                   f"the seed spread (every seed of each source above every seed of the next).")
    for r in rows:
        if r.top1 is not None and r.top1.n >= 2:
            out.append(f"- {r.source.label}: {r.top1.text()}, {'above' if r.top1.lo > CHANCE else 'not above'} chance "
                       f"({CHANCE:.0f}%) on every seed; {ratio(r.top1, t)} of the teacher's top-1.")
    if not out:
        return ["- Not enough students have finished for a reading."]
    out.append(f"- Confounds: every student has the teacher's architecture and the same {cfg.steps:,}-step budget, "
               f"but the teacher is a short CPU run (its own top-1 bounds every student's), and CIFAR-10's packed "
               f"images are the very images the teacher learned from; the paper's students train 200 epochs of "
               f"1.2M patches with a larger network, so only the ordering, not the level, is comparable.")
    if not t.agree:
        out.append("- **The students' logs disagree about the teacher** (top-1 or hash): they were not distilled "
                   "from one network; the rows are not comparable.")
    return out


def table(rows: list[Student], t: Teacher) -> str:
    """One line per source: seeds, steps reached, top-1 (mean ± half-range), ratio to the teacher, chance, paper."""
    lines = ["| source (student trained on) | role | seeds | reached | CIFAR-10 top-1 (ours) | ÷ teacher | chance | "
             "paper |", "|---|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        reached = " / ".join(sorted({records.reached(f) for f in r.facts})) or "–"
        paper = (f"{DISTILL_CIFAR10.top1:.1f} ({DISTILL_CIFAR10.setting}: another architecture and budget)"
                 if r.source.label == DISTILL_CIFAR10.source and r.source.role == "the paper's main source" else "–")
        lines.append(f"| {r.source.label} | {r.source.role} | {len(r.seeds)} | {reached} | {report.cell(r.top1)} | "
                     f"{ratio(r.top1, t)} | {CHANCE:.0f} | {paper} |")
    lines.append(f"| *the teacher* | `{t.path}` (small encoder, supervised) | – | – | {report.fmt(t.top1)} | 1.00 | "
                 f"{CHANCE:.0f} | – |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Student], t: Teacher, path: str) -> None:
    """Top-1 against steps per source: each seed a thin line, the mean over seeds bold; teacher and chance."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for r in rows:
        if not r.curves:
            continue
        colour = ax.plot([], [])[0].get_color()
        for pts in r.curves.values():
            ax.plot(*zip(*pts), color=colour, alpha=0.35, linewidth=0.8)
        steps = sorted(set.intersection(*(set(dict(p)) for p in r.curves.values())))
        means = [sum(dict(p)[s] for p in r.curves.values()) / len(r.curves) for s in steps]
        ax.plot(steps, means, color=colour, marker="o", label=f"{r.source.label} ({len(r.seeds)} seeds)")
    if t.top1 is not None:
        ax.axhline(t.top1, color="black", linestyle="--", linewidth=1, label=f"teacher ({t.top1:.1f})")
    ax.axhline(CHANCE, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("student steps")
    ax.set_ylabel("CIFAR-10 test top-1 (%)")
    ax.set_title("Students distilled from one teacher, by source", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    report.save_figure(fig, path)


def setting(cfg: DistillConfig, rows: list[Student]) -> str:
    """How the students and the teacher trained, read from their logs."""
    facts = [f for r in rows for f in r.facts if f]
    tf = records.train_facts(teacher_dir(cfg))
    if not facts or tf is None:
        return "_no student has finished yet_\n"
    c = facts[0].config
    same = all(f.config.get(k) == c.get(k) for f in facts for k in ("student_arch", "lr", "temperature", "max_steps"))
    return (f"Teacher: `train.supervised` ({tf.config.get('arch', '?')} encoder) on {records.trained_on(tf)}, "
            f"{records.reached(tf)}. Students: `train.distill`, {c.get('student_arch')} encoder from a seeded random "
            f"initialisation, recipe {c.get('recipe')} (flip, 4-px pad and crop, CutMix Beta({c.get('cutmix')}) on "
            f"every batch), KL at T = {c.get('temperature')}, {c.get('optimizer')} lr {c.get('lr')} (weight decay "
            f"{c.get('weight_decay')}, eps {c.get('eps')}; x{c.get('gamma')} at epochs {c.get('milestones')} of "
            f"{c.get('epochs')}, as fractions of the budget), batch {c.get('batch_size')}, {c.get('max_steps'):,} "
            f"steps, scored after each stage and each epoch on the test split of `{c.get('eval_data')}`. "
            + ("Every student ran these settings." if same else "**The students' settings differ** (see each log).")
            + "\n")


def write_page(cfg: DistillConfig, recs: dict[str, dict]) -> list[Student]:
    """The page and its plot from every student that has finished; returns the rows it shows."""
    rows, t = students(cfg), teacher(cfg)
    png = os.path.splitext(cfg.out)[0] + ".png"
    runs = [(f"{table3.SUPERVISED}, seed {cfg.seed} (the teacher)", teacher_dir(cfg))]
    runs += [(f"{s.label}, seed {seed}", run_dir(cfg, s, seed)) for s in sources(cfg) for seed in cfg.seed_list()]
    shown = any(r.top1 is not None for r in rows)
    parts = report.header("Single-image distillation at reduced scale on the CPU",
                          "`make repro-distill-cpu` (`python -m repro distill`)", cfg.seed_list())
    parts += ["The Augmented Image Prior (Asano & Saeed, ICLR 2023): a random student learns to match a frozen "
              "teacher's outputs from the patches of one source alone, never seeing a label. Choices: "
              "`docs/distill.md`.\n",
              f"## Students: CIFAR-10 test top-1 after {cfg.steps:,} steps\n", table(rows, t),
              f"![top-1 against steps]({os.path.basename(png)})\n" if shown else "",
              "## Reading\n", "\n".join(readings(cfg, rows, t)) + "\n",
              "## Setting\n", setting(cfg, rows),
              "## What each run trained\n", report.training_table(runs, {}),
              "## Time\n", report.time_table(recs), "## Configuration\n", report.configuration(cfg)]
    report.write_page(cfg.out, parts)
    if shown:
        plot(rows, t, png)
    return rows


def run(cfg: DistillConfig) -> list[Student]:
    """Run (or resume) the plan, refreshing the page after every student stage; returns the rows."""
    return run_with_page(cfg.work, plan(cfg, cifar_root(cfg.cifar, cfg.work)), cfg.images,
                         lambda recs: write_page(cfg, recs), refresh=("distill",))
