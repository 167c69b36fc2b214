"""`python -m probe.table RESULT...`: probe results as a Markdown table laid out like the paper's Tables 2/3.

Rows are method labels, columns are layers (grouped by dataset when results cover several, as in
Table 3's CIFAR-10 | CIFAR-100). With ``--paper table2|table3`` (or ``table1``) each cell also shows the
paper's number for the matching row, ``ours (paper)``; a row is matched through its label
(``--label "ours A=p"`` maps the row "ours A" to the paper's row (p)).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import click

from augment.files import describe_os_error, write_text_atomic
from probe.linear import FORMAT, RESULT
from probe.paper import DATASET_COLUMNS, LAYERS, TABLES, find_row

DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagefolder-cifar": "ImageFolder 32x32",
                 "imagefolder-imagenet": "ImageFolder (ImageNet-style)"}


def dataset_of(res: dict) -> str:
    """cifar10, cifar100, imagefolder-cifar (a 32x32 folder) or imagefolder-imagenet."""
    if res["dataset"] != "imagefolder":
        return res["dataset"]
    return f"imagefolder-{res.get('protocol', 'imagenet')}"
LAYER_ORDER = ["conv1", "conv2", "conv3", "conv4", "conv5"]


@dataclass
class Row:
    label: str
    paper_key: str                      # the paper row this label maps to ("" when none given)
    cells: dict[tuple[str, str], float]  # (dataset, layer) -> top-1
    sources: list[str]


def read_result(path: str) -> dict:
    """A probe.json (or the folder holding one); anything else is a one-line error."""
    if os.path.isdir(path):
        path = os.path.join(path, RESULT)
    try:
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise click.ClickException(f"{path}: not a readable probe result ({type(e).__name__}); run "
                                   f"`python -m probe.linear` first") from None
    if not isinstance(res, dict) or res.get("format") != FORMAT:
        raise click.ClickException(f"{path}: not a probe.json written by probe.linear")
    res["_path"] = path
    return res


def read_results(paths: list[str], labels: list[str] = ()) -> tuple[list[dict], list[str]]:
    """The results among ``paths`` (and their ``labels``, when one is given per path).

    A folder holding no probe.json (a feature cache, a run still going) is skipped with one line, so
    that a glob such as ``probes/*`` works; a file that is not a probe result is still an error.
    """
    if labels and len(labels) != len(paths):
        raise click.ClickException(f"--label given {len(labels)} times for {len(paths)} results; give one per "
                                   f"result, in the same order, or none")
    results, kept = [], []
    for i, path in enumerate(paths):
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, RESULT)):
            click.echo(f"skipped {path}: no {RESULT} in it", err=True)
            continue
        results.append(read_result(path))
        kept += [labels[i]] if labels else []
    if not results:
        raise click.ClickException(f"no probe results among the {len(paths)} path(s) given; run "
                                   f"`python -m probe.linear` first")
    return results, kept


def write_output(path: str, text: str) -> None:
    """Write a table or figure's text atomically; a failure is one line naming the file."""
    try:
        write_text_atomic(path, text)
    except OSError as e:
        raise click.ClickException(f"--out: {describe_os_error(e, path, len(text.encode()))}") from None


def parse_label(text: str) -> tuple[str, str]:
    """``"label=paper_row"`` or ``"label"`` (the label itself then names the paper row, if any)."""
    label, _, key = text.partition("=")
    return label.strip(), (key.strip() or label.strip())


def build_rows(results: list[dict], labels: list[str], metric: str) -> list[Row]:
    """One row per distinct label (a label's results on several datasets share the row)."""
    if labels and len(labels) != len(results):
        raise click.ClickException(f"--label given {len(labels)} times for {len(results)} results; give one per "
                                   f"result, in the same order, or none")
    key = "top1" if metric == "final" else "top1_best"
    rows: dict[str, Row] = {}
    for i, res in enumerate(results):
        label, paper_key = parse_label(labels[i]) if labels else (res.get("label") or "?", res.get("label") or "")
        row = rows.setdefault(label, Row(label, paper_key, {}, []))
        for layer, acc in res[key].items():
            row.cells[(dataset_of(res), layer)] = acc
        row.sources.append(res["_path"])
    return list(rows.values())


def columns(results: list[dict], paper: str | None) -> list[tuple[str, str]]:
    datasets = list(dict.fromkeys(dataset_of(r) for r in results))
    layers = {d: sorted({ly for r in results if dataset_of(r) == d for ly in r["layers"]}, key=LAYER_ORDER.index)
              for d in datasets}
    if paper:
        for d in datasets:
            layers[d] = sorted(set(layers[d]) | set(LAYERS[paper]), key=LAYER_ORDER.index)
    return [(d, ly) for d in datasets for ly in layers[d]]


def paper_value(paper: str | None, row: Row, dataset: str, layer: str) -> float | None | str:
    """The paper's number for this cell; "" when no paper row or column corresponds."""
    if not paper:
        return ""
    prow = find_row(paper, row.paper_key) if row.paper_key else None
    col = DATASET_COLUMNS[paper].get(dataset)
    if prow is None or col not in prow.columns or layer not in LAYERS[paper]:
        return ""
    return prow.columns[col][LAYERS[paper].index(layer)]


def cell(ours: float | None, theirs) -> str:
    mine = "–" if ours is None else f"{ours:.1f}"
    if theirs == "":
        return mine
    return f"{mine} ({'–' if theirs is None else f'{theirs:.1f}'})"


def make_table(results: list[dict], labels: list[str] = (), paper: str | None = None,
               metric: str = "final") -> str:
    """The Markdown table (plus notes naming every result's protocol) for ``results``."""
    labels, rows, cols = list(labels), build_rows(results, list(labels), metric), columns(results, paper)
    multi = len({d for d, _ in cols}) > 1
    head = ["Method"] + [f"{DATASET_NAMES.get(d, d)} {ly}" if multi else ly for d, ly in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * len(cols)]
    for row in rows:
        prow = find_row(paper, row.paper_key) if paper and row.paper_key else None
        name = row.label + (f" [paper: ({prow.key}) {prow.label}]" if prow and paper != "table3" else "")
        cells = [cell(row.cells.get((d, ly)), paper_value(paper, row, d, ly)) for d, ly in cols]
        lines.append("| " + " | ".join([name] + cells) + " |")
    notes = [f"\nTop-1 (%) of linear probes, {metric} epoch" + (", ours (paper's " + paper + ")" if paper else "")
             + ". Results:"]
    for res in results:
        c = res["config"]
        notes.append(f"- `{res['_path']}`: {res['dataset']}, {c['epochs']} epoch{'s' if c['epochs'] != 1 else ''} ({c['schedule']} schedule"
                     f"{', shortened' if c['epochs'] != 36 else ''}), pooling {res['resolved']['pooling']}, "
                     f"checkpoint {res['checkpoint']['method']} {res['checkpoint']['sha256'][:12]}"
                     + (f", train subset {c['limit_train']}" if c.get("limit_train") else ""))
    if paper:
        unmatched = [r.label for r in rows if not (r.paper_key and find_row(paper, r.paper_key))]
        if unmatched:
            notes.append(f"- no {paper} row matched: {', '.join(unmatched)} (map one with --label 'name=row')")
    return "\n".join(lines + notes) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("results", nargs=-1, required=True)
@click.option("--paper", type=click.Choice(sorted(TABLES)), default=None,
              help="Show this table's numbers beside ours: table2 (ImageNet), table3 (CIFAR), table1.")
@click.option("--label", "labels", multiple=True,
              help="Row label per RESULT, in order; 'name=row' maps it to a paper row (letter or name).")
@click.option("--metric", type=click.Choice(["final", "best"]), default="final", show_default=True,
              help="final: last epoch's accuracy; best: max over evaluated epochs (selected on the eval set).")
@click.option("--out", default="table.md", show_default=True, help="Markdown file to write, relative to the current folder ('-': print only).")
def main(results: tuple[str, ...], paper: str | None, labels: tuple[str, ...], metric: str, out: str) -> None:
    """Print (and write) a Markdown table of probe results, rows = methods, columns = layers."""
    found, labels = read_results(list(results), list(labels))
    text = make_table(found, labels, paper, metric)
    click.echo(text)
    if out != "-":
        write_output(out, text)
        # The default lands in the current folder: say where, and how not to write it.
        click.echo(f"wrote {os.path.abspath(out)} (--out - only prints the table)", err=True)


if __name__ == "__main__":
    main()
