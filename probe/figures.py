"""`python -m probe.figures filters|layers ...`: the paper's Fig. 2 (conv1 filters) and Fig. 6 (accuracy per layer).

* ``filters CHECKPOINT``: the learned conv1 filters (before BN folding: the weights the method learned)
  as a grid of tiles, 12 per row (96 filters -> 8 x 12), each filter min-max normalised to (-1, 1) on its
  own and shown as RGB (Sobel encoders: the two gradient channels side by side, in grey).
* ``layers RESULT... --supervised RESULT``: top-1 per layer, absolute (left) and relative to the
  supervised result in percent (right); ``--paper table2 --paper-rows f,k,p`` adds the paper's rows.
  Each series knows its dataset: the relative panel refuses a series probed on another dataset than
  the supervised one, and lines of several datasets on the absolute panel are labelled with theirs.
"""
from __future__ import annotations

import math
import os

import click
import numpy as np

from augment.files import atomic_path, describe_os_error
from probe.paper import DATASET_COLUMNS, LAYERS, TABLES, find_row

TILES_PER_ROW = 12


def normalise_filter(w: np.ndarray) -> np.ndarray:
    """Min-max scale one filter to (-1, 1); a constant filter maps to 0."""
    lo, hi = float(w.min()), float(w.max())
    if hi - lo < 1e-12:
        return np.zeros_like(w)
    return 2.0 * (w - lo) / (hi - lo) - 1.0


def filter_grid(weights: np.ndarray, per_row: int = TILES_PER_ROW, pad: int = 1) -> np.ndarray:
    """``O x C x k x k`` conv weights -> one H x W x 3 image in [0, 1] with a tile per filter."""
    o, c, kh, kw = weights.shape
    tiles = []
    for w in weights:
        w = normalise_filter(w)
        if c == 3:
            tile = w.transpose(1, 2, 0)
        else:  # Sobel (2 channels) or grey input: channels side by side, each in grey
            tile = np.concatenate([np.repeat(ch[..., None], 3, -1) for ch in w], axis=1)
        tiles.append((tile + 1.0) / 2.0)
    th, tw = tiles[0].shape[:2]
    rows = math.ceil(o / per_row)
    grid = np.ones((rows * (th + pad) + pad, per_row * (tw + pad) + pad, 3))
    for i, tile in enumerate(tiles):
        r, q = divmod(i, per_row)
        y, x = pad + r * (th + pad), pad + q * (tw + pad)
        grid[y:y + th, x:x + tw] = tile
    return grid


def plot_filters(checkpoint: str, out: str, title: str = "") -> str:
    """Write the conv1 filter grid of ``checkpoint`` (file or run folder) as a PNG; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probe.backbone import load_encoder_state
    from train.checkpoint import CHECKPOINT, load_checkpoint

    path = os.path.join(checkpoint, CHECKPOINT) if os.path.isdir(checkpoint) else checkpoint
    ck = load_checkpoint(path)
    encoder, _ = load_encoder_state(ck, path)
    grid = filter_grid(encoder.blocks["conv1"][0].weight.detach().cpu().numpy())
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 12, grid.shape[0] / 12 + 0.4), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or f"{ck.get('method', '?')} conv1", fontsize=9)
    _save(fig, out)
    return out


def _save(fig, out: str) -> None:
    """Write the figure atomically (the format follows the file's extension); one line on failure."""
    import matplotlib.pyplot as plt

    ext = os.path.splitext(out)[1].lstrip(".").lower()
    kinds = fig.canvas.get_supported_filetypes()
    try:
        if os.path.isdir(out):
            raise click.ClickException(f"--out {out}: a folder; give a file name in it, e.g. "
                                       f"{os.path.join(out, 'figure.png')}")
        if ext not in kinds:
            raise click.ClickException(f"--out {out}: {'no' if not ext else 'unknown'} image format "
                                       f"{ext!r}; end the name with one of .{', .'.join(sorted(kinds))}")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with atomic_path(out, suffix=os.path.splitext(out)[1]) as tmp:
            fig.savefig(tmp, bbox_inches="tight")
    except OSError as e:
        raise click.ClickException(f"--out: {describe_os_error(e, out)}") from None
    finally:
        plt.close(fig)


# A result's dataset as the paper's tables name it (a 32x32 ImageFolder stands for CIFAR-10, an
# ImageNet-style folder for ImageNet: the same mapping probe.table uses for the paper's columns).
PAPER_DATASET = {ours: col for cols in DATASET_COLUMNS.values() for ours, col in cols.items()}


def series_from_results(paths: list[str], labels: list[str], metric: str) -> dict[str, tuple[str, dict]]:
    """label -> (dataset, {layer: top-1}) for each probe result (folders without one are skipped)."""
    from probe.table import dataset_of, read_results

    results, labels = read_results(paths, labels)
    key = "top1" if metric == "final" else "top1_best"
    out = {}
    for i, res in enumerate(results):
        dataset = dataset_of(res)
        out[labels[i] if labels else res.get("label", res["_path"])] = (PAPER_DATASET.get(dataset, dataset),
                                                                        dict(res[key]))
    return out


def series_from_paper(table: str, rows: list[str]) -> dict[str, tuple[str, dict]]:
    """The paper's rows as series (their first dataset column: Table 3's CIFAR-10)."""
    out = {}
    for name in rows:
        row = find_row(table, name)
        if row is None:
            raise click.ClickException(f"--paper-rows {name}: no such row in {table}")
        dataset, values = next(iter(row.columns.items()))
        out[f"paper ({row.key}) {row.label}"] = (dataset, {ly: v for ly, v in zip(LAYERS[table], values)
                                                           if v is not None})
    return out


def check_datasets(series: dict[str, tuple[str, dict]], supervised: str | None) -> bool:
    """Refuse a percentage of another dataset's supervised probe; True when several datasets are plotted."""
    if supervised is not None:
        if supervised not in series:
            raise click.ClickException(f"--supervised {supervised}: not among the plotted series")
        ref = series[supervised][0]
        other = next((n for n, (d, _) in series.items() if d != ref), None)
        if other is not None:
            raise click.ClickException(f"--supervised {supervised} was probed on {ref} but {other} on "
                                       f"{series[other][0]}: a percentage needs both on one dataset; plot each "
                                       f"dataset on its own")
    return len({d for d, _ in series.values()}) > 1


def plot_layers(series: dict[str, tuple[str, dict]], supervised: str | None, out: str) -> str:
    """Absolute top-1 per layer (left) and, with a supervised series, percent of it (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = check_datasets(series, supervised)
    layers = sorted({ly for _, s in series.values() for ly in s}, key=lambda n: int(n.removeprefix("conv")))
    fig, axes = plt.subplots(1, 2 if supervised else 1, figsize=(11 if supervised else 5.5, 4), squeeze=False)
    for name, (dataset, s) in sorted(series.items(), key=lambda kv: kv[1][0]):
        xs = [i for i, ly in enumerate(layers) if ly in s]
        style, label = ("--" if name.startswith("paper") else "-"), (f"{name} [{dataset}]" if several else name)
        axes[0, 0].plot(xs, [s[layers[i]] for i in xs], style, marker="o", label=label)
        if supervised:
            ref = series[supervised][1]
            xr = [i for i in xs if ref.get(layers[i])]
            axes[0, 1].plot(xr, [100.0 * s[layers[i]] / ref[layers[i]] for i in xr], style, marker="o", label=label)
    for ax, ylabel in zip(axes[0], ["top-1 (%)", f"% of {supervised}"]):
        ax.set_xticks(range(len(layers)), layers)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7)
    _save(fig, out)
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Figures of the paper from checkpoints and probe results (PNG)."""


@cli.command("filters")
@click.argument("checkpoint")
@click.option("--out", default="conv1-filters.png", show_default=True)
@click.option("--title", default="", help="Default: the checkpoint's method.")
def filters_cmd(checkpoint: str, out: str, title: str) -> None:
    """conv1 filters of CHECKPOINT as a tile grid, each filter normalised to (-1, 1) (Fig. 2)."""
    click.echo(f"wrote {plot_filters(checkpoint, out, title)}", err=True)


@cli.command("layers")
@click.argument("results", nargs=-1)
@click.option("--label", "labels", multiple=True, help="Series name per RESULT, in order.")
@click.option("--supervised", default=None, help="Series (label) the right panel is relative to.")
@click.option("--paper", type=click.Choice(sorted(TABLES)), default=None, help="Add rows of this paper table.")
@click.option("--paper-rows", default="", help="Comma-separated paper rows, e.g. a,f,k,p.")
@click.option("--metric", type=click.Choice(["final", "best"]), default="final", show_default=True)
@click.option("--out", default="layers.png", show_default=True)
def layers_cmd(results, labels, supervised, paper, paper_rows, metric, out) -> None:
    """Accuracy per layer for several RESULTs, absolute and relative to a supervised one (Fig. 6)."""
    series = series_from_results(list(results), list(labels), metric) if results else {}
    if paper:
        series |= series_from_paper(paper, [r for r in paper_rows.split(",") if r.strip()])
    if not series:
        raise click.ClickException("nothing to plot: give probe results and/or --paper with --paper-rows")
    if supervised and supervised not in series:
        row = find_row(paper, supervised) if paper else None
        supervised = f"paper ({row.key}) {row.label}" if row else supervised
    click.echo(f"wrote {plot_layers(series, supervised, out)}", err=True)


if __name__ == "__main__":
    cli()
