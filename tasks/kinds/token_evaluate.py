"""Token classification scored on a prepared split: each word's predicted tag, the entity metrics, and the
EvalResult the gate reads (headline: micro entity F1; rows: sentences, each with its (tp, fp, fn)).

A sentence's row in ``truth``/``predictions`` is its tags joined by spaces, so the gate's same-rows check
compares sentences whole; per_class holds the entity types' precision, recall and F1 (support: true
entities); accuracy is the share of words tagged right, for information.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.kinds.token_align import predict_words
from tasks.kinds.token_metrics import entity_scores, sentence_counts
from tasks.kinds.token_sources import TAGS, TOKENS, as_lists

if TYPE_CHECKING:
    from tasks.evaluate import EvalResult

log = logging.getLogger("transferline.evaluate")


def _evaluate() -> Any:
    """tasks.evaluate by name: a written-out import would make it code of every stage (tasks/stages.py
    follows imports, and every stage reaches the table of tasks)."""
    return importlib.import_module("tasks.evaluate")


def entity_result(
    truth: list[list[str]], predicted: list[list[str]], types: list[str], name: str, broken: int = 0
) -> EvalResult:
    """The EvalResult of predicted IOB2 tags against the true ones; `broken` sentences had non-finite
    outputs (then every headline figure is NaN: an argmax of NaN would look like a real tag)."""
    evaluate = _evaluate()
    scores = entity_scores(truth, predicted, types)
    words = sum(len(t) for t in truth)
    right = sum(a == b for t, p in zip(truth, predicted, strict=True) for a, b in zip(t, p, strict=False))
    per_class = {
        t: evaluate.ClassMetrics(s.precision, s.recall, s.f1, s.support) for t, s in scores.per_type.items()
    }
    accuracy, f1 = (right / words if words else float("nan")), scores.f1
    macro_f1 = sum(m.f1 for m in per_class.values()) / len(per_class) if per_class else float("nan")
    if broken:
        log.error("%s: non-finite outputs on %d of %d sentences: its F1 is NaN", name, broken, len(truth))
        accuracy = macro_f1 = f1 = float("nan")
    return evaluate.EvalResult(
        name=name,
        labels=list(types),
        n=len(truth),
        accuracy=accuracy,
        macro_f1=macro_f1,
        per_class=per_class,
        confusion=[],
        truth=[" ".join(t) for t in truth],
        predictions=[" ".join(p) for p in predicted],
        metric=evaluate.F1,
        f1=f1,
        counts=sentence_counts(truth, predicted).tolist(),
    )


def score_sentences(
    predictor: Any, frame: pd.DataFrame, types: list[str], name: str, batch_size: int
) -> EvalResult:
    """`predictor` on a prepared split's sentences (`types`: the declared entity types)."""
    predicted, _, finite = predict_words(predictor, as_lists(frame, TOKENS), batch_size)
    result = entity_result(as_lists(frame, TAGS), predicted, types, name, broken=finite.count(False))
    log.info(
        "%s: entity F1 %.4f, word accuracy %.4f on %d sentences", name, result.f1, result.accuracy, result.n
    )
    return result
