"""`python -m augment ...`: render, verify, show, info, merge, noise (this module), publish, fetch (share.py) and
pack (pack.py)."""
from __future__ import annotations

import dataclasses
import os

import click
from click.core import ParameterSource

from augment.color import HUE_SPACES, JITTER_ORDERS, JitterParams
from augment.geometry import CROP_SAMPLERS, GeomParams
from augment.recipes import RECIPES, VARIANTS
from augment.sources import SOURCE_CACHE_MIB

UNIT = click.FloatRange(0, 1)
UNIT_OPEN = click.FloatRange(0, 1, min_open=True)


# What an interrupted command leaves, and how to go on (render says it itself, shard by shard).
AFTER_INTERRUPT = {
    "fetch": "shards already checked are kept and a half-downloaded one resumes where it stopped; run the "
             "same command again",
    "pack": "no manifest was written, so the folder is not a set; run the same command again (it starts over)",
    "publish": "the destination may hold some shards but no manifest, so readers do not see a set; run the same "
               "command again",
    "render": "complete shards are kept; run the same command again to resume",
    "merge": "manifest.json is written atomically, so it is the old one or none; run the same command again",
    "show": "the grid is written atomically, so nothing half-written is left; run it again",
}


class Group(click.Group):
    """The ``augment`` group: Ctrl-C in any command is one line and exit 130, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            from augment.render import Interrupted

            name = ctx.invoked_subcommand or "augment"
            raise Interrupted(f"augment {name} interrupted: "
                              f"{AFTER_INTERRUPT.get(name, 'it writes nothing; run it again')}") from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Render, check and share frozen shard sets of single-image augmentations."""


def _range(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        i, k = (int(x) for x in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not I:J (two shard indices, J exclusive)") from None
    return i, k


@cli.command()
@click.option("--image", required=True, help="A, B or C (the paper's images), an image file, or a folder.")
@click.option("--n", "n", type=click.IntRange(1), default=1, show_default=True, help="Number of source images N.")
@click.option("--count", "count", type=click.IntRange(1), default=None, help="Patches D [default: 1281167; cifar: 50000].")
@click.option("--size", "size", type=click.IntRange(1), default=None, help="Patch side S [default: 256; cifar: 32].")
@click.option("--preset", type=click.Choice(["imagenet", "cifar"]), default="imagenet", show_default=True,
              help="D and S of the paper's two settings; --count/--size override.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Processes (whole shards each; give the cores to use, as `make shards` does: the bytes do "
              "not depend on it).")
@click.option("--out", default=None, help="Output folder [default: shards/IMG-nN-sS-dD].")
@click.option("--format", "fmt", type=click.Choice(["auto", "jpg", "png"]), default="auto", show_default=True,
              help="auto: png for S <= 64, jpg above.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG quality.")
@click.option("--samples-per-shard", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--shard-range", default=None, help="I:J: render only shards I..J-1 (then `merge`).")
@click.option("--min-area", type=UNIT_OPEN, default=GeomParams.min_area, show_default=True, help="β.")
@click.option("--max-area", type=UNIT_OPEN, default=GeomParams.max_area, show_default=True)
@click.option("--aspect", type=UNIT_OPEN, default=GeomParams.aspect, show_default=True, help="γ: h/w in [γ, 1/γ].")
@click.option("--max-angle", type=click.FloatRange(0, 90, max_open=True), default=GeomParams.max_angle, show_default=True, help="α range, degrees.")
@click.option("--flip", "flip_prob", type=UNIT, default=GeomParams.flip_prob, show_default=True)
@click.option("--brightness", type=UNIT, default=JitterParams.brightness, show_default=True)
@click.option("--contrast", type=UNIT, default=JitterParams.contrast, show_default=True)
@click.option("--saturation", type=UNIT, default=JitterParams.saturation, show_default=True)
@click.option("--hue", type=click.FloatRange(0, 0.5), default=JitterParams.hue, show_default=True)
@click.option("--no-scale", is_flag=True, help="Ablation: the crop is the whole image (Table 1).")
@click.option("--no-rotation", is_flag=True, help="Ablation: angle 0 (Table 1).")
@click.option("--no-jitter", is_flag=True, help="Ablation: no colour jitter (Table 1).")
@click.option("--max-pixels", type=click.IntRange(1), default=None, help="Decompression-bomb guard [default: 178956970].")
@click.option("--source-cache", type=click.IntRange(0), default=SOURCE_CACHE_MIB, show_default=True,
              help="MiB of source pyramids each process keeps (0: only the one in use). Bounds memory for "
                   "large N; the bytes do not change.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--variant", type=click.Choice(list(VARIANTS)), default="paper", show_default=True,
              help="Sets --recipe, --crop-sampler, --hue-space, --jitter-order at once (docs/variants.md); "
                   "options given explicitly win.")
@click.option("--recipe", type=click.Choice(RECIPES), default=None,
              help="paper (§3.1) or released (the authors' later generator); released also changes the "
                   "defaults of --min-area, --max-angle, --flip, --jitter-prob, --max-shear, --init-crop "
                   "[default: from --variant].")
@click.option("--crop-sampler", type=click.Choice(CROP_SAMPLERS), default=None,
              help="conditional: aspect and angle, then the area that fits; joint: all three drawn together "
                   "and rejected, 10 tries [default: from --variant].")
@click.option("--hue-space", type=click.Choice(HUE_SPACES), default=None,
              help="rgb-rotation: rotate RGB about the grey axis; hsv: torchvision's shift of H "
                   "[default: from --variant].")
@click.option("--jitter-order", type=click.Choice(JITTER_ORDERS), default=None,
              help="fixed: one composed map, clipped once; random: ColorJitter's random order, clipping "
                   "after each step [default: from --variant].")
@click.option("--jitter-prob", type=click.FloatRange(0, 1), default=None,
              help="Share of patches jittered [default: paper 1, released 0.5].")
@click.option("--max-shear", type=click.FloatRange(0, 90, max_open=True), default=None,
              help="Released recipe: x-shear range, degrees [default: 30].")
@click.option("--init-crop", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Released recipe: side of the first square crop / the short side [default: 0.5].")
def render(image, n, count, size, preset, seed, workers, out, fmt, quality, samples_per_shard, shard_range,
           min_area, max_area, aspect, max_angle, flip_prob, brightness, contrast, saturation, hue, no_scale,
           no_rotation, no_jitter, max_pixels, source_cache, quiet, variant, recipe, crop_sampler, hue_space,
           jitter_order, jitter_prob, max_shear, init_crop) -> None:
    """Render N source images into D augmented S x S patches as a shard set."""
    from augment.recipes import resolve
    from augment.render import PRESETS, Recipe, RenderConfig, canonical_command, render as run, resolve_format
    from augment.sources import DEFAULT_MAX_PIXELS

    count = PRESETS[preset]["count"] if count is None else count
    size = PRESETS[preset]["size"] if size is None else size
    ctx = click.get_current_context()
    given = {k: v for k, v in ctx.params.items() if v is not None
             and ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
    refuse_unused(variant, given, resolve_format(fmt, size),
                  next(p.default for p in ctx.command.params if p.name == "quality"))
    kind, geom, jitter = resolve(variant, given)
    geom = dataclasses.replace(geom, scale=not no_scale, rotation=not no_rotation)
    jitter = dataclasses.replace(jitter, enabled=not no_jitter)
    recipe = Recipe(count, size, n, seed, resolve_format(fmt, size), quality, samples_per_shard, geom, jitter,
                    kind)
    if out is None:
        stem = os.path.splitext(os.path.basename(os.path.normpath(image)))[0]
        out = os.path.join("shards", f"{stem}-n{n}-s{size}-d{count}")
    cfg = RenderConfig(image, out, recipe, workers, _range(shard_range), max_pixels or DEFAULT_MAX_PIXELS,
                       not quiet, canonical_command(image, recipe, out), source_cache_mib=source_cache)
    res = run(cfg)
    what = f"set {res['id']}" if res["id"] else f"piece {res['written']} (run `python -m augment merge {out}`)"
    speed = (f" in {res['seconds']:.1f} s ({res['rate']:,.0f} patches/s)" if res["rendered"] else "")
    click.echo(f"{out}: {res['rendered']} shards rendered{speed}, {res['kept']} kept; {what}")


# Options that an ablation switch makes moot: given together, the set would record (and be identified by)
# a setting that changes none of its bytes.
MOOT_WITH = {"no_scale": ("min_area", "max_area", "aspect"), "no_rotation": ("max_angle",),
             "no_jitter": ("brightness", "contrast", "saturation", "hue", "jitter_prob", "hue_space", "jitter_order")}


def refuse_unused(variant: str, given: dict, fmt: str, default_quality: int) -> None:
    """One line for an option given beside a switch that makes it moot (``--no-scale --min-area 0.5``), or a
    ``--quality`` for a PNG set, when its value would change the set's recorded config (and so its id) but
    none of its bytes. A value the set would record anyway (a canonical command's) is let through."""
    from augment.recipes import resolve

    opt = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    recorded = resolve(variant, given)[1:]
    for switch, moot in MOOT_WITH.items():
        for k in (k for k in moot if given.get(switch) and k in given):
            if recorded != resolve(variant, {x: v for x, v in given.items() if x != k})[1:]:
                raise click.ClickException(f"{opt(k)} has no effect with {opt(switch)}; drop one of the two (the "
                                           f"set would record a setting that changes none of its bytes)")
    if fmt == "png" and given.get("quality", default_quality) != default_quality:
        raise click.ClickException(f"--quality sets JPEG quality, and this set is PNG (--format png, or auto with "
                                   f"S <= 64); drop --quality or pass --format jpg")


@cli.command()
@click.argument("folder")
def merge(folder) -> None:
    """Merge the manifest pieces of --shard-range jobs into manifest.json."""
    from augment.render import merge as run

    click.echo(f"{folder}: merged into manifest.json, set {run(folder)}")


@cli.command()
@click.argument("folder")
@click.option("--rerender", type=click.IntRange(0), default=0, show_default=True, help="Also re-render K random samples.")
@click.option("--sources", default=None, help="File or folder holding the sources (for --rerender of non-named).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Picks the re-rendered samples.")
def verify(folder, rerender, sources, seed) -> None:
    """Check every shard's size, sha256 and samples against the manifest."""
    from augment.verify import VerifyConfig, verify as run

    report = run(VerifyConfig(folder, rerender, sources, seed))
    for line in report.lines:
        click.echo(line)
    if report.problems:
        raise click.ClickException(f"{folder}: {len(report.problems)} problem(s): {'; '.join(report.problems[:5])}")
    click.echo(f"{folder}: OK ({report.shards} shards, {report.samples} samples"
               + (f", {rerender} re-rendered samples identical)" if rerender else ")"))


@cli.command()
@click.argument("folder")
def info(folder) -> None:
    """Summarise a shard set (id, count, size, format, sources, shards, bytes, config)."""
    from augment.manifest import read_manifest
    from augment.verify import presence_problems, summary

    m = read_manifest(folder)
    click.echo(summary(m))
    if problems := presence_problems(m):
        raise click.ClickException(f"{folder}: damaged, {len(problems)} shard(s) missing or of the wrong size "
                                   f"({'; '.join(problems[:3])}); run `python -m augment verify {folder}`, "
                                   f"then re-render or re-fetch the set")


@cli.command()
@click.argument("folder")
@click.option("--out", required=True, help="PNG file to write.")
@click.option("--count", "k", type=click.IntRange(1), default=64, show_default=True, help="Patches in the grid.")
@click.option("--cols", type=click.IntRange(1), default=8, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
def show(folder, out, k, cols, seed) -> None:
    """Draw a grid of random patches of a set (the paper's Figs. 7-10)."""
    from augment.show import ShowConfig, show as run

    click.echo(f"wrote {run(ShowConfig(folder, out, k, cols, seed))}")


@cli.command()
@click.option("--out", required=True, help="PNG file to write.")
@click.option("--width", type=click.IntRange(1), default=1024, show_default=True)
@click.option("--height", type=click.IntRange(1), default=768, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Draws every pixel.")
def noise(out, width, height, seed) -> None:
    """Write a seeded uniform-noise image: a source with no structure (render it like any image)."""
    from augment.files import describe_os_error
    from augment.sources import write_noise_image

    try:
        digest = write_noise_image(out, width, height, seed)
    except OSError as e:
        raise click.ClickException(f"--out {out}: cannot write the noise image "
                                   f"({describe_os_error(e, e.filename or out)})") from None
    click.echo(f"wrote {out} ({width}x{height} noise, seed {seed}, sha256 {digest[:16]})")
