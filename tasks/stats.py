"""Paired statistics for the gate: both models scored on the same test rows.

Pure functions on per-row correctness (``EvalResult.correct()``), numpy only:

- ``paired_bootstrap_ci``: percentile interval of the accuracy difference (challenger - champion),
  resampling whole rows so each row keeps both models' outcomes (the pairing is what makes it tight);
- ``mcnemar``: exact two-sided McNemar test on the discordant rows (binomial, p = 0.5);
- ``recall_drops``: per-class recall lost by the challenger relative to the champion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tasks.evaluate import EvalResult

# Bound on resampled indices held in memory at once (int64: 4 Mi indices = 32 MiB).
DEFAULT_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval at ``level`` (e.g. 0.95)."""

    estimate: float
    low: float
    high: float
    level: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test. b: rows only the challenger gets right; c: rows only the champion gets right.

    ``statistic`` is the exact test's statistic, min(b, c), the count referred to Binomial(b + c, 0.5).
    """

    b: int
    c: int
    statistic: float
    p_value: float
    method: str


def _paired(a_correct: Sequence[bool] | np.ndarray, b_correct: Sequence[bool] | np.ndarray) -> tuple:
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"expected 1-D per-row correctness, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"paired statistics need the same rows: {a.size} vs {b.size} rows")
    return a, b


def paired_bootstrap_ci(
    a_correct: Sequence[bool] | np.ndarray,
    b_correct: Sequence[bool] | np.ndarray,
    *,
    samples: int,
    alpha: float,
    seed: int,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> Interval:
    """Percentile paired-bootstrap interval of mean(a) - mean(b) over the same rows.

    Each resample draws n row indices with replacement (``numpy.random.default_rng(seed)``, one row of a
    ``(samples, n)`` index matrix per resample, generated in blocks of at most ``block_elements``
    indices so memory stays bounded; the block size does not change the draws). The interval is the
    (alpha/2, 1 - alpha/2) quantiles of the resampled differences; ``estimate`` is the observed one.

    Args:
        a_correct: per-row correctness of the challenger.
        b_correct: per-row correctness of the champion, on the same rows in the same order.
        samples: number of bootstrap resamples.
        alpha: 1 - confidence level (0.05 -> a 95% interval).
        seed: seed of the resampling generator.
        block_elements: most indices generated at once.
    """
    a, b = _paired(a_correct, b_correct)
    n = a.size
    if n == 0:
        raise ValueError("paired bootstrap needs at least one row")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    diff = a.astype(np.int64) - b.astype(np.int64)  # per row: +1, 0 or -1
    estimate = float(diff.sum()) / n
    rng = np.random.default_rng(seed)
    stats = np.empty(samples, dtype=np.float64)
    rows_per_block = max(1, block_elements // n)
    for start in range(0, samples, rows_per_block):
        stop = min(samples, start + rows_per_block)
        idx = rng.integers(0, n, size=(stop - start, n))
        stats[start:stop] = diff[idx].sum(axis=1) / n
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return Interval(estimate=estimate, low=float(low), high=float(high), level=1 - alpha)


def _binom_cdf_half(k: int, m: int) -> float:
    """P(X <= k) for X ~ Binomial(m, 0.5), exactly: sum of C(m, i) for i <= k over 2**m (integers)."""
    if k < 0:
        return 0.0
    if k >= m:
        return 1.0
    term = 1  # C(m, 0)
    total = 1
    for i in range(k):
        term = term * (m - i) // (i + 1)  # C(m, i + 1), exact
        total += term
    return total / (1 << m)  # int / int is correctly rounded (0.0 on underflow)


def mcnemar(a_correct: Sequence[bool] | np.ndarray, b_correct: Sequence[bool] | np.ndarray) -> McNemar:
    """Exact two-sided McNemar test of challenger (a) vs champion (b) on the same rows.

    b = rows only the challenger gets right, c = rows only the champion gets right; under H0 (equal
    accuracy) b ~ Binomial(b + c, 0.5), so p = min(1, 2 * P(X <= min(b, c))), and p = 1 when b + c = 0.
    """
    a, z = _paired(a_correct, b_correct)
    b = int(np.count_nonzero(a & ~z))
    c = int(np.count_nonzero(~a & z))
    k, m = min(b, c), b + c
    p = 1.0 if m == 0 else min(1.0, 2.0 * _binom_cdf_half(k, m))
    return McNemar(b=b, c=c, statistic=float(k), p_value=p, method="exact binomial, two-sided")


def recall_drops(challenger: EvalResult, champion: EvalResult) -> dict[str, float]:
    """Per class (the champion's classes, in order): champion recall - challenger recall; positive = drop.

    A class the challenger does not report counts as recall 0.
    """
    drops: dict[str, float] = {}
    for label, champ in champion.per_class.items():
        mine = challenger.per_class.get(label)
        drops[label] = champ.recall - (mine.recall if mine is not None else 0.0)
    return drops
