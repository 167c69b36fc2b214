"""Loader throughput at S = 256 beside the decode-only floor measured in the same run.

The floor is one process decoding the set's JPEG bytes from memory, nothing else (per decoder:
torchvision.io and pillow-simd). The loader rows stream the same set from disk through the full
pipeline (tar read, shuffle, decode, RotNet's 224 crop + flip, batching, worker -> main transfer)
with 1 and 2 DataLoader workers; rates exclude the first batch (worker start-up).
Goals (issue 3): >= 0.75 x the floor with 1 worker, >= 1.8 x the 1-worker rate with 2 workers.
"""
from __future__ import annotations

import os
import tarfile
import tempfile
import time

import torch

from tests.toyset import make_toy_set
from train.data import decode_image, make_loader, random_crop_flip


def jpeg_payloads(folder: str) -> list[bytes]:
    out = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(folder, name)) as t:
                out += [t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".jpg")]
    return out


def decode_rate(payloads: list[bytes], how: str) -> float:
    decode_image(payloads[0], how)                     # imports and first-call set-up off the clock
    t = time.perf_counter()
    for p in payloads:
        decode_image(p, how)
    return len(payloads) / (time.perf_counter() - t)


def loader_rate(folder: str, workers: int, batch: int, decode: str) -> float:
    loader = make_loader(folder, batch_size=batch, workers=workers, seed=0, transform=random_crop_flip(224),
                         decode=decode)
    n, t = 0, None
    for images, _ in loader.epoch(0):
        if t is None:
            t = time.perf_counter()                    # after the first batch: workers are running
            continue
        n += len(images)
    return n / (time.perf_counter() - t)


def run(quick: bool) -> str:
    count, batch = (96, 8) if quick else (3072, 64)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_toy_set(os.path.join(tmp, "s256"), count=count, size=256, per_shard=count // 8, fmt="jpg")
        payloads = jpeg_payloads(folder)
        mean_kb = sum(map(len, payloads)) / len(payloads) / 1024
        floor = {how: decode_rate(payloads, how) for how in ("torchvision", "pil")}
        rows = [f"| decode only, {how} (1 process) | {r:.0f} | 1.00 |" for how, r in floor.items()]
        one = None
        for workers in (1, 2):
            r = loader_rate(folder, workers, batch, "torchvision")
            one = one or r
            rows.append(f"| loader, {workers} worker{'s' * (workers > 1)} (torchvision) | {r:.0f} | "
                        f"{r / floor['torchvision']:.2f} (x{r / one:.2f} of 1 worker) |")
    return "\n".join([
        "## Loader throughput (S = 256)\n",
        f"{count} JPEG patches of 256x256 (mean {mean_kb:.0f} KiB, toy content), {count // 8} per shard, "
        f"batch {batch}, RotNet's 224 crop + flip; samples/s.\n",
        "| stage | samples/s | vs decode floor |", "|---|---|---|", *rows, "",
        "Goals: loader with 1 worker >= 0.75 of the floor; 2 workers >= 1.8x one worker.\n"])
