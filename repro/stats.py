"""Seeds and what they allow a reading to say.

A row trained with K seeds is a ``Spread``: its mean and its range. A reading claims a direction only
outside the seed spread: A is *above* B when every seed of A lies above every seed of B (the ranges do not
overlap), *below* likewise, and otherwise the difference is *within the seed spread*. With one seed on
either side nothing is claimed. This is deliberately conservative: with two seeds per row the range is the
only honest yardstick, and a reading that says "above" must survive any pairing of the seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

ABOVE, BELOW, WITHIN, ONE_SEED = "above", "below", "within the seed spread", "one seed: no direction claimed"


@dataclass(frozen=True)
class Spread:
    """The values one row reached over its seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    @property
    def half_range(self) -> float:
        return (self.hi - self.lo) / 2

    def text(self, fmt: str = ".1f") -> str:
        """``mean ± half-range`` (one seed: the value alone)."""
        return f"{self.mean:{fmt}}" if self.n == 1 else f"{self.mean:{fmt}} ± {self.half_range:{fmt}}"


def spread(values: Iterable[float | None]) -> Spread | None:
    """The spread of the values that exist (None when none does)."""
    vs = tuple(float(v) for v in values if v is not None)
    return Spread(vs) if vs else None


def direction(a: Spread | None, b: Spread | None) -> str | None:
    """``above``, ``below`` or ``within the seed spread`` for A against B; None when either is missing."""
    if a is None or b is None:
        return None
    if a.n < 2 or b.n < 2:
        return ONE_SEED
    if a.lo > b.hi:
        return ABOVE
    if a.hi < b.lo:
        return BELOW
    return WITHIN


def difference(a: Spread, b: Spread) -> str:
    """``+1.3 (above)``: the difference of the means and what the seeds allow it to say."""
    return f"{round(a.mean - b.mean, 1) + 0.0:+.1f} ({direction(a, b)})"


def per_layer(rows: Sequence[Sequence[float | None]]) -> list[Spread | None]:
    """Per layer, the spread over the seeds' rows of per-layer values."""
    width = max((len(r) for r in rows), default=0)
    return [spread(r[i] if i < len(r) else None for r in rows) for i in range(width)]
