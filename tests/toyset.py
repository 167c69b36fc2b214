"""Small shard sets made directly with the shard writer, for tests that must not depend on the renderer."""
from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

from augment.manifest import write_manifest
from augment.shards import sample_key, shard_name, write_shard


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG" if fmt == "jpg" else "PNG", **({"quality": 95} if fmt == "jpg" else {}))
    return buf.getvalue()


def make_toy_set(out: str, count: int = 64, size: int = 32, per_shard: int = 16, fmt: str = "png",
                 seed: int = 0, shard_counts: list[int] | None = None) -> str:
    """Write ``count`` random patches (a smooth colour ramp + noise) as a valid shard set; returns ``out``.

    ``shard_counts`` gives uneven shard sizes explicitly (they must sum to ``count``).
    """
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = shard_counts or [min(per_shard, count - i) for i in range(0, count, per_shard)]
    assert sum(counts) == count
    shards, first = [], 0
    yy, xx = np.mgrid[0:size, 0:size]
    for si, n in enumerate(counts):
        def samples(first=first, n=n):
            for i in range(first, first + n):
                base = rng.integers(0, 255, 3)
                img = (base[None, None, :] + 40 * np.sin((xx + i)[..., None] / 3.0)
                       + rng.normal(0, 10, (size, size, 3))).clip(0, 255).astype(np.uint8)
                yield sample_key(i), {fmt: encode(img, fmt), "json": json.dumps({"index": i}).encode()}
        shards.append(write_shard(os.path.join(out, shard_name(si)), first, samples()).to_json())
        first += n
    write_manifest(out, {"count": count, "size": size, "image_format": fmt, "seed": seed,
                         "samples_per_shard": per_shard,
                         "config": {"toy": True, "count": count, "size": size, "seed": seed},
                         "sources": [{"name": "toy", "sha256": "0" * 64}], "shards": shards,
                         "versions": {}})
    return out
