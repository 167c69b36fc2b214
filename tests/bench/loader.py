"""Loader throughput at S = 256 beside the decode-only floor measured in the same run.

The floor is one process decoding the set's JPEG bytes from memory with the loader's own decoder call
(``decode_image``), nothing else; pillow-simd is shown for comparison. The loader rows stream the same
set from disk through the full pipeline (tar read, shuffle, decode, RotNet's 224 crop + flip, batching,
worker -> main transfer) in-process and with 1 and 2 DataLoader workers. Wall rates exclude the first
batch (worker start-up); CPU rates divide the samples by the CPU seconds of the process(es) doing the
work (the workers', or the main process's with 0 workers), which a loaded machine disturbs far less
than wall time. Every figure is the best of ``repeats`` runs; the load average is printed beside them.
Goals (issue 3): >= 0.75 x the floor with 1 worker, >= 1.8 x the 1-worker rate with 2 workers.
"""
from __future__ import annotations

import os
import resource
import tempfile
import time

import torch

from tests.toyset import make_toy_set
from train.loader import SKIPPED, decode_image, make_loader, random_crop_flip, tar_samples


def jpeg_payloads(folder: str) -> list[bytes]:
    """The JPEG bytes of every sample of a set, in shard order."""
    out = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".tar"):
            with open(os.path.join(folder, name), "rb") as f:
                out += [bytes(d) for _, d in tar_samples(f, "jpg") if d is not None and d is not SKIPPED]
    return out


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def decode_rate(payloads: list[bytes], how: str) -> tuple[float, float]:
    """(wall, CPU) samples/s of decoding ``payloads`` in this process."""
    decode_image(payloads[0], how)                     # imports and first-call set-up off the clock
    t, c = time.perf_counter(), time.process_time()
    for p in payloads:
        decode_image(p, how)
    return len(payloads) / (time.perf_counter() - t), len(payloads) / (time.process_time() - c)


def loader_rate(folder: str, workers: int, batch: int, verify: bool = True) -> tuple[float, float]:
    """(wall, CPU) samples/s of one loader epoch; CPU = the workers' (or, with 0, this process's)."""
    loader = make_loader(folder, batch_size=batch, workers=workers, seed=0, transform=random_crop_flip(224),
                         verify_stream=verify)
    who = resource.RUSAGE_CHILDREN if workers else resource.RUSAGE_SELF
    n, t, c0 = 0, None, _cpu(who)
    for images, _ in loader.epoch(0):
        if t is None:
            t = time.perf_counter()                    # after the first batch: workers are running
            continue
        n += len(images)
    wall = n / (time.perf_counter() - t)
    # Non-persistent workers are joined at the end of the epoch, so their CPU time is counted by now.
    return wall, (n + batch) / (_cpu(who) - c0)


def _best(f, repeats: int) -> tuple[float, float]:
    runs = [f() for _ in range(repeats)]
    return max(r[0] for r in runs), max(r[1] for r in runs)


def run(quick: bool) -> str:
    count, batch, repeats = (96, 8, 1) if quick else (3072, 64, 3)
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_toy_set(os.path.join(tmp, "s256"), count=count, size=256, per_shard=count // 8, fmt="jpg")
        payloads = jpeg_payloads(folder)
        mean_kb = sum(map(len, payloads)) / len(payloads) / 1024
        floor = {how: _best(lambda: decode_rate(payloads, how), repeats) for how in ("torchvision", "pil")}
        fw, fc = floor["torchvision"]
        rows = [f"| decode only, {how} (1 process) | {w:.0f} | {c:.0f} | {w / fw:.2f} | {c / fc:.2f} |"
                for how, (w, c) in floor.items()]
        rates = {}
        for workers in (0, 1, 2):
            w, c = rates[workers] = _best(lambda: loader_rate(folder, workers, batch), repeats)
            label = f"loader, {workers} worker{'s' * (workers != 1)}" + (" (in-process)" if not workers else "")
            rows.append(f"| {label} | {w:.0f} | {c:.0f} | {w / fw:.2f} | {c / fc:.2f} |")
        # The stream's sha256 check against the manifest (on by default), measured in-process where it costs most.
        uw, uc = _best(lambda: loader_rate(folder, 0, batch, verify=False), repeats)
        rows.append(f"| loader, in-process, --no-verify-stream | {uw:.0f} | {uc:.0f} | {uw / fw:.2f} | {uc / fc:.2f} |")
    load1 = os.getloadavg()
    scale = rates[2][0] / rates[1][0]
    return "\n".join([
        "## Loader throughput (S = 256)\n",
        f"{count} JPEG patches of 256x256 (mean {mean_kb:.0f} KiB, toy content, q95), {count // 8} per shard, "
        f"batch {batch}, RotNet's 224 crop + flip; samples/s, best of {repeats}. Load average "
        f"{load0[0]:.2f} before, {load1[0]:.2f} after, on {os.cpu_count()} cores.\n",
        "| stage | wall samples/s | CPU samples/s | wall vs floor | CPU vs floor |", "|---|---|---|---|---|",
        *rows, "",
        f"1 worker: {rates[1][0] / fw:.2f} of the floor (wall), {rates[1][1] / fc:.2f} (CPU); 2 workers: "
        f"x{scale:.2f} of 1 worker (wall). Goals: >= 0.75 of the floor with one worker, >= 1.8x with two "
        f"(wall figures mean something only on an otherwise idle machine with >= 3 cores free).\n",
        f"Hashing every shard as it streams (the default; `--no-verify-stream` turns it off) costs "
        f"{100 * (1 - rates[0][1] / uc):.1f}% of the in-process CPU rate ({rates[0][1]:.0f} vs {uc:.0f} samples "
        f"per CPU second). Goal: under 5%.\n"])
