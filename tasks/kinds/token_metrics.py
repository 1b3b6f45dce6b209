"""Entity-level metrics of token classification and the gate's paired comparison over sentences.

An entity counts as found only when its span and type both match exactly (the CoNLL definition, as
conlleval and seqeval's default mode compute it); precision, recall and F1 are given per type and micro
(over all entities). F1 is not a mean over sentences, so the paired bootstrap resamples whole sentences —
each keeping both models' true positives, false positives and false negatives — and recomputes the micro
F1 difference of each resample; McNemar's test, which needs one right/wrong outcome per row, does not
apply. The resampling draws the same indices as tasks/stats.py's accuracy bootstrap for the same seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.stats import DEFAULT_BLOCK_ELEMENTS, Interval


@dataclass(frozen=True)
class TypeScores:
    precision: float
    recall: float
    f1: float
    support: int  # true entities of the type


@dataclass(frozen=True)
class EntityScores:
    """Micro precision/recall/F1 over all entities and the same per declared type."""

    precision: float
    recall: float
    f1: float
    per_type: dict[str, TypeScores]


def entity_scores(truth: list[list[str]], predicted: list[list[str]], types: Sequence[str]) -> EntityScores:
    """seqeval's entity-level scores (default, conlleval-compatible mode) of IOB2 tag sequences; a type
    with no true and no predicted entity scores 0."""
    from seqeval.metrics import classification_report

    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} sentences of tags but {len(predicted)} of predictions")
    if not truth:
        raise ValueError("no sentences to score")
    report = classification_report(truth, predicted, output_dict=True, zero_division=0)
    per_type = {
        t: TypeScores(*(float(report.get(t, {}).get(k, 0.0)) for k in ("precision", "recall", "f1-score")),
                      int(report.get(t, {}).get("support", 0)))
        for t in types
    }  # fmt: skip
    micro = report["micro avg"]
    return EntityScores(float(micro["precision"]), float(micro["recall"]), float(micro["f1-score"]), per_type)


def sentence_counts(truth: list[list[str]], predicted: list[list[str]]) -> np.ndarray:
    """(N, 3) per sentence: entities found exactly (tp), predicted but wrong (fp), missed (fn)."""
    from seqeval.metrics.sequence_labeling import get_entities

    rows = []
    for true_tags, pred_tags in zip(truth, predicted, strict=True):
        gold, found = set(get_entities(list(true_tags))), set(get_entities(list(pred_tags)))
        tp = len(gold & found)
        rows.append((tp, len(found) - tp, len(gold) - tp))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def micro_f1(counts: np.ndarray) -> np.ndarray:
    """Micro F1 of summed (tp, fp, fn) along the last axis: 2tp / (2tp + fp + fn), 0 with no entities."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def paired_bootstrap_f1(
    a_counts: np.ndarray,
    b_counts: np.ndarray,
    *,
    samples: int,
    alpha: float,
    seed: int,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> Interval:
    """Percentile paired-bootstrap interval of micro F1(a) - micro F1(b) over the same sentences.

    Args:
        a_counts, b_counts: (N, 3) sentence_counts of the challenger and the champion, same sentences.
        samples: resamples; alpha: 1 - confidence level; seed: of ``numpy.random.default_rng``.
        block_elements: most indices drawn at once (does not change the draws).
    """
    a, b = np.asarray(a_counts, dtype=np.int64), np.asarray(b_counts, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"paired F1 needs (N, 3) counts of the same sentences: {a.shape} vs {b.shape}")
    n = a.shape[0]
    if n == 0:
        raise ValueError("paired bootstrap needs at least one sentence")
    if samples < 1 or not 0 < alpha < 1:
        raise ValueError(f"need samples >= 1 and 0 < alpha < 1, got {samples}, {alpha}")
    estimate = float(micro_f1(a.sum(0)) - micro_f1(b.sum(0)))
    rng = np.random.default_rng(seed)
    stats = np.empty(samples, dtype=np.float64)
    rows_per_block = max(1, block_elements // n)
    for start in range(0, samples, rows_per_block):
        stop = min(samples, start + rows_per_block)
        idx = rng.integers(0, n, size=(stop - start, n))  # (resamples, n): the same draws as stats.py's
        stats[start:stop] = micro_f1(a[idx].sum(1)) - micro_f1(b[idx].sum(1))
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return Interval(estimate=estimate, low=float(low), high=float(high), level=1 - alpha)


def f1_drops(challenger: Mapping[str, Any], champion: Mapping[str, Any]) -> dict[str, float]:
    """Per type of the champion: its F1 minus the challenger's (positive = the challenger lost F1).

    Args:
        challenger, champion: per type, scores with an ``f1`` (EntityScores.per_type, or an entity
            EvalResult's per_class); a type the challenger lacks counts as F1 0.
    """
    drops = {}
    for entity, theirs in champion.items():
        mine = challenger.get(entity)
        drops[entity] = theirs.f1 - (mine.f1 if mine is not None else 0.0)
    return drops
