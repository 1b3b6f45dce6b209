"""The classical baseline of token classification: a linear-chain CRF (sklearn-crfsuite) on hand-made
features of each word and its neighbours, scored with the same entity-level metrics as the fine-tuned
model. What the evidence's learning curve compares the pretrained encoder with.

Features are the usual ones of CoNLL-era taggers: the lower-cased word, its prefixes and suffixes, its
shape (capitalised, all caps, digits, punctuation, a Twitter @mention / #hashtag / URL), and the same for
the previous and next word. The regularisation (c1, c2) is chosen on validation from GRID (CrfBaseline, the
evidence's classical arm for taggers) or by the caller (bench/ner_baseline.py).
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tasks.classical import CRF_NAME, ClassicalFit
from tasks.kinds.token_metrics import EntityScores, entity_scores
from tasks.kinds.token_sources import TAGS, TOKENS, as_lists

log = logging.getLogger("transferline.crf")
_URL = re.compile(r"^(https?://|www\.)", re.IGNORECASE)
# (c1, c2) tried on validation: L1 and L2 strengths around sklearn-crfsuite's usual 0.1.
C1_GRID, C2_GRID = (0.01, 0.1, 0.3), (0.01, 0.1)
GRID = tuple(itertools.product(C1_GRID, C2_GRID))


def word_features(word: str, prefix: str = "") -> dict[str, Any]:
    """One word's features, keys prefixed (``-1:``/``+1:`` for the neighbours)."""
    lower = word.lower()
    return {
        f"{prefix}lower": lower,
        f"{prefix}prefix3": lower[:3],
        f"{prefix}suffix3": lower[-3:],
        f"{prefix}suffix2": lower[-2:],
        f"{prefix}title": word.istitle(),
        f"{prefix}upper": word.isupper(),
        f"{prefix}digit": any(c.isdigit() for c in word),
        f"{prefix}punct": not any(c.isalnum() for c in word),
        f"{prefix}mention": word.startswith("@"),
        f"{prefix}hashtag": word.startswith("#"),
        f"{prefix}url": bool(_URL.match(word)),
    }


def sentence_features(words: list[str]) -> list[dict[str, Any]]:
    """Per word: its features, its neighbours' (or a sentence boundary marker) and a bias."""
    out = []
    for i, word in enumerate(words):
        features: dict[str, Any] = {"bias": 1.0, **word_features(word)}
        features.update(word_features(words[i - 1], "-1:") if i else {"start": True})
        features.update(word_features(words[i + 1], "+1:") if i + 1 < len(words) else {"end": True})
        out.append(features)
    return out


@dataclass(frozen=True)
class CrfRun:
    scores: EntityScores  # on the evaluated split
    predictions: list[list[str]]


def fit(train: pd.DataFrame, *, c1: float = 0.1, c2: float = 0.1, max_iterations: int = 100) -> Any:
    """A CRF (sklearn_crfsuite.CRF) fitted on the prepared `train` split: L-BFGS, elastic-net c1/c2."""
    import sklearn_crfsuite

    crf = sklearn_crfsuite.CRF(
        algorithm="lbfgs", c1=c1, c2=c2, max_iterations=max_iterations, all_possible_transitions=True
    )
    crf.fit([sentence_features(w) for w in as_lists(train, TOKENS)], as_lists(train, TAGS))
    return crf


def score(crf: Any, split: pd.DataFrame, types: list[str]) -> CrfRun:
    """A fitted CRF's tags for a prepared split's sentences and their entity scores."""
    predicted = [list(p) for p in crf.predict([sentence_features(w) for w in as_lists(split, TOKENS)])]
    return CrfRun(entity_scores(as_lists(split, TAGS), predicted, types), predicted)


@dataclass(frozen=True)
class CrfBaseline:
    """The evidence's classical arm for taggers (tasks/classical.py ``baseline``): a CRF per (c1, c2) of
    `grid` fitted on the training sentences, the best validation entity F1 kept (the first of equals),
    scored by entity F1 over the declared `types`."""

    types: list[str]
    grid: tuple[tuple[float, float], ...] = GRID
    name: str = CRF_NAME

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame, seed: int) -> ClassicalFit:
        """`seed` is unused: L-BFGS on a CRF is deterministic."""
        cells: list[dict[str, Any]] = []
        models = []
        for c1, c2 in self.grid:
            started = time.perf_counter()
            models.append(fit(train, c1=c1, c2=c2))
            seconds = time.perf_counter() - started
            f1 = score(models[-1], validation, self.types).scores.f1
            cells.append({"c1": c1, "c2": c2, "val_accuracy": f1, "seconds": seconds, "chosen": False})
            log.info("CRF c1=%g c2=%g: validation entity F1 %.4f in %.0f s", c1, c2, f1, seconds)
        best = max(range(len(cells)), key=lambda i: cells[i]["val_accuracy"])
        cells[best]["chosen"] = True
        crf, chosen = models[best], cells[best]
        return ClassicalFit(
            crf,
            {"c1": chosen["c1"], "c2": chosen["c2"]},
            chosen["val_accuracy"],
            cells,
            chosen["seconds"],
            len(crf.state_features_) + len(crf.transition_features_),
        )

    def accuracy(self, model: Any, frame: pd.DataFrame) -> float:
        """The CRF's micro entity F1 on `frame`'s sentences: the score taggers are compared by."""
        return score(model, frame, self.types).scores.f1
