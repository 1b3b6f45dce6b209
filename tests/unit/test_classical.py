"""The TF-IDF + logistic-regression baseline on constructed reviews: C is chosen on validation, and the
model learns what the words say."""

import pandas as pd
import pytest

from tasks.classical import C_GRID, accuracy, fit

GOOD, BAD = ["moving", "sharp", "funny", "tender"], ["dull", "clumsy", "tedious", "flat"]


def reviews(n: int, offset: int = 0) -> pd.DataFrame:
    """n reviews, half fresh (a good word) and half rotten (a bad word), with shared filler words."""
    rows = []
    for i in range(offset, offset + n):
        fresh = i % 2 == 0
        word = (GOOD if fresh else BAD)[i % 4]
        rows.append(
            {"text": f"the film was {word} and the cast {i % 7}", "label": "fresh" if fresh else "rotten"}
        )
    return pd.DataFrame(rows)


def test_c_is_chosen_on_validation_and_the_model_learns_the_words():
    fitted = fit(reviews(40), reviews(20, offset=40), seed=42)
    assert [cell["C"] for cell in fitted.grid] == list(C_GRID)
    best = max(cell["val_accuracy"] for cell in fitted.grid)
    first_best = next(cell for cell in fitted.grid if cell["val_accuracy"] == best)
    assert [cell for cell in fitted.grid if cell["chosen"]] == [first_best]
    assert (fitted.c, fitted.val_accuracy) == (first_best["C"], best)
    assert accuracy(fitted.model, reviews(20, offset=60)) == 1.0
    vocabulary = len(fitted.model.named_steps["tfidf"].vocabulary_)
    assert fitted.parameters == vocabulary + 1  # one coefficient per feature and the intercept (2 classes)


def test_an_empty_grid_is_refused():
    with pytest.raises(ValueError, match="c_grid is empty"):
        fit(reviews(10), reviews(4, offset=10), seed=42, c_grid=())
