"""The vocabulary of drift checks, whatever the task: a check's verdict, its policy and threshold, and the
two statistics every task's checks use (the population stability index and the MMD permutation test).

The drift stage (tasks/drift.py) runs the label-share check and asks the task module for the rest
(text: tasks/kinds/text_drift.py); both build their verdicts from here. Pure: numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tasks.config import DriftConfig

# Checks whose threshold applies to a p-value (drift when p < alpha) rather than to the statistic.
P_VALUE_CHECKS = frozenset({"length", "embedding"})
EPSILON = 1e-4  # floor of a label share in the PSI, so an empty class gives a large but finite term
STAT_NAMES = {"label": "PSI", "length": "D", "oov": "Δ", "embedding": "MMD²"}


@dataclass(frozen=True)
class DriftCheck:
    """One check's verdict. ``statistic`` is None when the check was not computed (ignored or skipped).

    ``threshold`` bounds the statistic for ``label`` and ``oov`` (drift when above) and the p-value for
    ``length`` and ``embedding`` (drift when p < threshold, i.e. ``drift.alpha``).
    """

    name: str  # label | length | oov | embedding
    statistic: float | None
    threshold: float
    p_value: float | None
    drifted: bool
    policy: str  # ignore | warn | block
    detail: str  # one human sentence

    @property
    def status(self) -> str:
        """ignored | skipped | ok | warning | blocking."""
        if self.policy == "ignore":
            return "ignored"
        if self.statistic is None:
            return "skipped"
        if not self.drifted:
            return "ok"
        return "blocking" if self.policy == "block" else "warning"

    def condition(self) -> str:
        """The drift condition as text, e.g. ``PSI > 0.1`` or ``p < 0.01``."""
        if self.name in P_VALUE_CHECKS:
            return f"p < {self.threshold:g}"
        return f"{STAT_NAMES.get(self.name, 'statistic')} > {self.threshold:g}"

    def headline(self) -> str:
        """Statistic (and p-value) vs threshold in a few words, e.g. ``PSI 0.52 > 0.1``."""
        if self.statistic is None:
            return self.status
        stat = f"{STAT_NAMES.get(self.name, 'statistic')} {num(self.statistic)}"
        if self.name in P_VALUE_CHECKS and self.p_value is not None:
            op = "<" if self.p_value < self.threshold else ">="
            return f"{stat}, p {num(self.p_value)} {op} alpha {self.threshold:g}"
        op = ">" if self.statistic > self.threshold else "<="
        return f"{stat} {op} {self.threshold:g}"


def ignored(name: str, cfg: DriftConfig) -> DriftCheck | None:
    """The entry of a check whose policy is ``ignore`` (not computed); None when it is to be computed."""
    policy = getattr(cfg, name)
    if policy != "ignore":
        return None
    why = f"not computed (drift.{name}: ignore)"
    return DriftCheck(name, None, threshold(name, cfg), None, False, policy, why)


def threshold(name: str, cfg: DriftConfig) -> float:
    return {"label": cfg.max_label_psi, "oov": cfg.max_oov_increase}.get(name, cfg.alpha)


def skipped(name: str, cfg: DriftConfig, why: str) -> DriftCheck:
    return DriftCheck(name, None, threshold(name, cfg), None, False, getattr(cfg, name), f"skipped: {why}")


def psi(reference_shares: np.ndarray, current_shares: np.ndarray, epsilon: float = EPSILON) -> float:
    """Population stability index of two share vectors over the same bins, shares floored at epsilon."""
    p = np.maximum(np.asarray(reference_shares, dtype=float), epsilon)
    q = np.maximum(np.asarray(current_shares, dtype=float), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, permutations: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """(MMD², permutation p-value, bandwidth) of samples x (n, d) and y (m, d) with an RBF kernel.

    MMD² is the biased V-statistic ``w' K w`` with ``w = (1/n, ..., -1/m, ...)``; each permutation
    shuffles w, so all resamples are one (B, N) @ (N, N) product on the fixed kernel matrix.
    """
    z = np.vstack([x, y]).astype(np.float64)
    n, m = len(x), len(y)
    sq = np.einsum("ij,ij->i", z, z)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    upper = d2[np.triu_indices(len(z), k=1)]
    median = float(np.median(upper)) if upper.size else 0.0
    if median <= 0.0:  # (nearly) all points equal: any bandwidth gives MMD² 0
        median = float(upper.max()) if upper.size and upper.max() > 0 else 1.0
    kernel = np.exp(-d2 / (2.0 * median))
    w = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(w @ kernel @ w)
    shuffled = rng.permuted(np.tile(w, (permutations, 1)), axis=1)
    null = np.einsum("bi,bi->b", shuffled @ kernel, shuffled)
    p_value = (1.0 + float(np.sum(null >= observed - 1e-12))) / (1.0 + permutations)
    return max(observed, 0.0), p_value, math.sqrt(median)


def num(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1 else f"{value:.3g}"
    return f"{value:.2e}"
