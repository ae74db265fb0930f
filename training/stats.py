"""Small-sample statistics for experiment reports: Student-t intervals over seeds and paired differences.

No scipy in the environment, so the t quantile is computed here: the Student-t density integrated with Simpson's
rule (its CDF), inverted by bisection. tests/training/test_stats.py pins it to the published table values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache


def _t_pdf(x: float, df: int) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def _t_cdf(x: float, df: int, steps: int = 2000) -> float:
    """P(T <= x) for x >= 0: 0.5 plus the density's integral over [0, x] (composite Simpson, ``steps`` even)."""
    h = x / steps
    total = _t_pdf(0.0, df) + _t_pdf(x, df)
    total += sum((4 if i % 2 else 2) * _t_pdf(i * h, df) for i in range(1, steps))
    return 0.5 + total * h / 3


@lru_cache(maxsize=64)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` degrees of freedom."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError("t_quantile needs 0.5 < p < 1 and df >= 1")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:  # bracket: the df = 1 0.975 quantile is 12.7
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with its two-sided 95% Student-t interval (``half`` is NaN below two values)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def mean_interval(values: Sequence[float], level: float = 0.95, resolution: float = 0.0) -> Interval:
    """Mean ± t_{(1+level)/2, n−1} · s / √n over the values (s: the sample standard deviation), the half-width at
    least ``resolution``: the step the values move in (one validation clip of top-1). Seeds that agree to the
    clip give s = 0, and a zero-width interval from them says nothing about the next seed."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, float("nan"), n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, max(t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n), resolution), n)


def verdict(diff: Interval, min_n: int = 3) -> str:
    """A claim "a beats b" from the interval of a − b: holds (all above 0), reversed (all below), or not resolved.

    Fewer than ``min_n`` pairs are never resolved: top-1 on a few hundred clips moves in steps of a quarter point,
    so two seeds often give the same difference twice, and a zero-width interval from two equal values says
    nothing about a third seed.
    """
    if diff.n < max(min_n, 2) or math.isnan(diff.half):
        return "not resolved at this budget"
    tolerance = 1e-9 * max(1.0, abs(diff.mean))  # a difference of exactly one step is not above it by rounding
    if diff.low > tolerance:
        return "holds"
    if diff.high < -tolerance:
        return "reversed"
    return "not resolved at this budget"
