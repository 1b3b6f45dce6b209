"""The baseline with no transfer at all: TF-IDF features and a logistic regression (scikit-learn).

What a practitioner tries first on labelled text. Its regularisation strength C is chosen on the validation
split, never on test, so it is tuned as fairly as the arms it is compared with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.prepare import LABEL, TEXT

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

NAME = "tfidf-logreg"  # the arm's strategy in results.json
# Inverse regularisation strengths tried on validation: half-decades around scikit-learn's default of 1.
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
# Word unigrams and bigrams with sublinear term frequency: the usual strong setting for short reviews.
NGRAMS = (1, 2)


@dataclass(frozen=True)
class ClassicalFit:
    model: Pipeline  # fitted TF-IDF + logistic regression of the chosen C
    c: float
    val_accuracy: float
    grid: list[dict[str, float | bool]]  # per C tried: {"C", "val_accuracy", "seconds", "chosen"}
    seconds: float  # the chosen C's fit
    parameters: int  # coefficients and intercepts of the logistic regression


def fit(
    train: pd.DataFrame, validation: pd.DataFrame, seed: int, c_grid: tuple[float, ...] = C_GRID
) -> ClassicalFit:
    """Fit one model per C on `train` and keep the one with the best validation accuracy.

    Args:
        train, validation: frames with `text` and `label` columns.
        seed: the solver's random state.
        c_grid: the C values tried; ties go to the first (the strongest regularisation).
    Returns:
        the chosen model with every C's validation accuracy.
    """
    if not c_grid:
        raise ValueError("c_grid is empty: give at least one C")
    grid: list[dict[str, float | bool]] = []
    models = []
    for c in c_grid:
        started = time.perf_counter()
        models.append(_pipeline(c, seed).fit(train[TEXT].tolist(), train[LABEL].tolist()))
        seconds = time.perf_counter() - started
        grid.append({"C": c, "val_accuracy": accuracy(models[-1], validation), "seconds": seconds})
    best = max(range(len(grid)), key=lambda i: grid[i]["val_accuracy"])  # the first of equals
    chosen, model = grid[best], models[best]
    for i, cell in enumerate(grid):
        cell["chosen"] = i == best
    classifier = model.named_steps["classifier"]
    return ClassicalFit(
        model,
        float(chosen["C"]),
        float(chosen["val_accuracy"]),
        grid,
        float(chosen["seconds"]),
        int(classifier.coef_.size + classifier.intercept_.size),
    )


def accuracy(model: Pipeline, frame: pd.DataFrame) -> float:
    """Share of `frame`'s rows whose label the model predicts."""
    predicted = model.predict(frame[TEXT].tolist())
    return float((predicted == frame[LABEL].to_numpy()).mean())


def _pipeline(c: float, seed: int) -> Pipeline:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            ("tfidf", TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True)),
            ("classifier", LogisticRegression(C=c, max_iter=2000, random_state=seed)),
        ]
    )
