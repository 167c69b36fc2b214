"""The paper's numbers (Asano et al., ICLR 2020, Tables 1-5) and its successor's distillation result (Asano &
Saeed, ICLR 2023), for "beside" columns and figures.

Rows are keyed by the paper's letter (``"p"``) and also findable by their full label. ``None`` is the
paper's "-" (not reported).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    key: str                       # the paper's row letter, or a short name for Table 3
    label: str
    columns: dict[str, list[float | None]]   # dataset -> accuracy per layer


def _rows(dataset: str, rows: list[tuple[str, str, list]]) -> dict[str, PaperRow]:
    return {k: PaperRow(k, label, {dataset: acc}) for k, label, acc in rows}


TABLE1 = _rows("cifar10", [  # MonoGAN augmentation ablation, CIFAR-10, small encoder conv1..conv4
    ("a", "Fully sup.", [66.5, 70.1, 72.4, 75.9]),
    ("b", "Random feat.", [57.8, 55.5, 54.2, 47.3]),
    ("c", "No aug.", [57.9, 56.2, 54.2, 47.8]),
    ("d", "Jitter", [58.9, 58.0, 57.0, 49.8]),
    ("e", "Rotation", [61.4, 58.8, 56.1, 47.5]),
    ("f", "Scale", [67.9, 69.3, 67.9, 59.1]),
    ("g", "Rot. & jitter", [64.9, 63.6, 61.0, 53.4]),
    ("h", "Rot. & scale", [67.6, 69.9, 68.0, 60.7]),
    ("i", "Jitter & scale", [68.1, 71.3, 69.5, 62.4]),
    ("j", "All", [68.1, 72.3, 70.8, 63.5]),
])

TABLE2 = _rows("imagenet", [  # ImageNet LSVRC-12, AlexNet-BN conv1..conv5, ten-crop top-1
    ("a", "Full-supervision", [19.3, 36.3, 44.2, 48.3, 50.5]),
    ("b", "Scattering (Oyallon et al., 2017)", [None, 18.9, None, None, None]),
    ("c", "Random", [11.6, 17.1, 16.9, 16.3, 14.1]),
    ("d", "k-means (Krähenbühl et al., 2016)", [17.5, 23.0, 24.5, 23.2, 20.6]),
    ("e", "BiGAN (Donahue et al., 2017)", [17.7, 24.5, 31.0, 29.9, 28.0]),
    ("f", "BiGAN mono, Image A", [20.4, 30.9, 33.4, 28.4, 16.0]),
    ("g", "BiGAN mono, Image B", [20.5, 30.4, 31.6, 27.0, 16.8]),
    ("h", "BiGAN deka", [16.2, 16.5, 16.5, 13.1, 7.5]),
    ("i", "BiGAN kilo", [16.1, 17.7, 18.3, 17.6, 13.5]),
    ("j", "RotNet (Gidaris et al., 2018)", [18.8, 31.7, 38.7, 38.2, 36.5]),
    ("k", "RotNet mono, Image A", [19.9, 30.2, 30.6, 27.6, 21.9]),
    ("l", "RotNet mono, Image B", [17.8, 27.6, 27.9, 25.4, 20.2]),
    ("m", "RotNet deka", [19.6, 30.7, 32.6, 28.9, 22.6]),
    ("n", "RotNet kilo", [21.0, 33.5, 36.5, 34.0, 29.4]),
    ("o", "DeepCluster (Caron et al., 2018)", [18.0, 32.5, 39.2, 37.2, 30.6]),
    ("p", "DeepCluster mono, Image A", [20.7, 31.5, 32.5, 28.5, 21.0]),
    ("q", "DeepCluster mono, Image B", [19.7, 30.1, 31.6, 28.5, 20.4]),
    ("r", "DeepCluster mono, Image C", [18.9, 29.2, 31.5, 28.9, 23.5]),
    ("s", "DeepCluster deka", [18.5, 29.0, 31.1, 28.2, 21.9]),
    ("t", "DeepCluster kilo", [19.5, 29.8, 33.0, 31.7, 26.8]),
])

# Table 1's (a), (b) and (j) are Table 3's Fully supervised, Random and MonoGAN CIFAR-10 rows: the paper
# prints the same runs in both tables, so their numbers are written once, in TABLE1.
TABLE3 = {r.key: r for r in [  # CIFAR-10/100, small encoder conv1..conv4
    PaperRow("supervised", "Fully supervised", {"cifar10": TABLE1["a"].columns["cifar10"],
                                                "cifar100": [38.7, 43.6, 44.4, 46.5]}),
    PaperRow("random", "Random", {"cifar10": TABLE1["b"].columns["cifar10"], "cifar100": [30.9, 29.8, 28.6, 24.1]}),
    PaperRow("rotnet", "RotNet", {"cifar10": [64.4, 65.6, 65.6, 59.1], "cifar100": [36.0, 35.9, 34.2, 25.8]}),
    PaperRow("gan-cifar10", "GAN (CIFAR-10)", {"cifar10": [67.7, 73.0, 72.5, 69.2],
                                               "cifar100": [39.6, 46.0, 45.1, 39.9]}),
    PaperRow("gan-cifar100", "GAN (CIFAR-100)", {"cifar10": [None] * 4, "cifar100": [38.1, 42.2, 44.0, 46.6]}),
    PaperRow("monogan", "MonoGAN", {"cifar10": TABLE1["j"].columns["cifar10"], "cifar100": [39.9, 46.9, 44.5, 38.8]}),
]}

# Table 4: conv1-2 frozen (or replaced by the Scattering transform), the rest retrained on ImageNet
# LSVRC-12; AlexNet top-1. One column, so it is not among the per-layer TABLES below.
TABLE4 = _rows("imagenet", [
    ("full-sup", "Full sup.", [59.4]),
    ("random", "Random", [42.6]),
    ("scattering", "Scattering", [49.2]),
    ("bigan-a", "BiGAN, A", [51.4]),
    ("rotnet-a", "RotNet, A", [49.5]),
    ("deepcluster-a", "DeepCluster A", [52.5]),
])

TABLE5 = _rows("imagenet", [  # conv1-2 from a single-image model, whole AlexNet fine-tuned, then probed (10 crops)
    ("full-sup", "Full sup.", [19.3, 36.3, 44.2, 48.3, 50.5]),
    ("bigan-a", "BiGAN, A", [22.5, 37.6, 44.2, 47.6, 48.3]),
    ("rotnet-a", "RotNet, A", [22.0, 38.2, 44.8, 49.2, 51.8]),
    ("deepcluster-a", "DeepCluster, A", [21.8, 35.9, 43.6, 48.8, 50.4]),
])

TABLES = {"table1": TABLE1, "table2": TABLE2, "table3": TABLE3, "table5": TABLE5}
LAYERS = {"table1": ["conv1", "conv2", "conv3", "conv4"], "table2": ["conv1", "conv2", "conv3", "conv4", "conv5"],
          "table3": ["conv1", "conv2", "conv3", "conv4"], "table5": ["conv1", "conv2", "conv3", "conv4", "conv5"]}
# Which result datasets each table's columns stand for (ImageNet-style folders fill Table 2's; a 32x32
# ImageFolder is taken to be CIFAR-10, the only CIFAR offline, as the JPEG tree of ../shared/data).
DATASET_COLUMNS = {"table1": {"cifar10": "cifar10", "imagefolder-cifar": "cifar10"},
                   "table2": {"imagefolder-imagenet": "imagenet"},
                   "table5": {"imagefolder-imagenet": "imagenet"},
                   "table3": {"cifar10": "cifar10", "cifar100": "cifar100", "imagefolder-cifar": "cifar10"}}


def normalise(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


def find_row(table: str, name: str) -> PaperRow | None:
    """A paper row by letter (``p``, ``(p)``), key (``monogan``) or label (case and punctuation ignored)."""
    rows = TABLES[table]
    n = normalise(name)
    for row in rows.values():
        if n in (normalise(row.key), normalise(row.label)):
            return row
    return None


@dataclass(frozen=True)
class DistillResult:
    """A published single-image distillation result (The Augmented Image Prior, Asano & Saeed, ICLR 2023)."""

    source: str
    top1: float
    setting: str


# CIFAR-10 test top-1 of a student distilled on one image's patches alone (the Animals image is Image B here).
DISTILL_CIFAR10 = DistillResult("Image B", 93.7, "WRN-16-4 student from a WRN-40-4 teacher, 1.2M-patch set, "
                                "200 epochs at batch 512 on a GPU")
