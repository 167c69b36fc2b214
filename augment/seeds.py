"""The one seed-mixing helper: every derived random stream in the project is seeded through ``mix``.

``mix(seed, epoch, rank, ...)`` is stable across processes, platforms and Python versions (unlike
``hash()``), and distinct inputs give independent streams (numpy's SeedSequence).
"""
from __future__ import annotations

import numpy as np


def mix(*parts: int) -> int:
    """A 63-bit seed from a tuple of integers (fits torch, numpy and Python generators)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return int(state.view(np.uint64)[0] >> 1)


def mix32(*parts: int) -> int:
    """A 31-bit seed from a tuple of integers, for libraries that take a C int (faiss)."""
    return mix(*parts) & 0x7FFFFFFF
