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
    assert (fitted.settings, fitted.val_accuracy) == ({"C": first_best["C"]}, best)
    assert accuracy(fitted.model, reviews(20, offset=60)) == 1.0
    vocabulary = len(fitted.model.named_steps["tfidf"].vocabulary_)
    assert fitted.parameters == vocabulary + 1  # one coefficient per feature and the intercept (2 classes)


def test_an_empty_grid_is_refused():
    with pytest.raises(ValueError, match="c_grid is empty"):
        fit(reviews(10), reviews(4, offset=10), seed=42, c_grid=())


def test_the_image_baseline_is_a_logistic_regression_on_pixels_chosen_on_validation(tmp_path):
    """lfw_subset's faces against other crops, from the files, at PIXEL_SIDE: C on validation, well above
    chance on held-out images."""
    from tasks.classical import PIXEL_C_GRID, PIXEL_SIDE, PIXELS_NAME, baseline
    from tasks.kinds import load_task
    from tests.data.images import lfw_folder
    from tests.unit.test_image_kind import options

    folder = lfw_folder(tmp_path / "lfw", per_class=60)
    files = sorted(folder.rglob("*.png"))
    frame = pd.DataFrame(
        {"image": [str(f.relative_to(folder)) for f in files], "label": [f.parent.name for f in files]}
    )
    train, val, test = (frame.iloc[i::3].reset_index(drop=True) for i in range(3))
    pixels = baseline(load_task("image-classification", options()), folder)
    fitted = pixels.fit(train, val, seed=0)
    assert pixels.name == PIXELS_NAME and [cell["C"] for cell in fitted.grid] == list(PIXEL_C_GRID)
    assert [{"C": cell["C"]} for cell in fitted.grid if cell["chosen"]] == [fitted.settings]
    assert fitted.parameters == PIXEL_SIDE * PIXEL_SIDE * 3 + 1  # RGB pixels and the intercept (2 classes)
    assert pixels.accuracy(fitted.model, test) >= 0.75


def test_a_task_without_a_baseline_is_refused():
    from tasks.classical import baseline

    class Audio:
        name, input_column = "audio-classification", "audio"

    with pytest.raises(ValueError, match="no classical baseline for audio-classification"):
        baseline(Audio())


def test_the_tagger_baseline_is_a_crf_chosen_on_validation_entity_f1():
    from tasks.classical import CRF_NAME, baseline
    from tasks.kinds import task_of
    from tasks.kinds.token_crf import GRID
    from tests.data.sentences import TYPES, corpus, ner_config

    rows = corpus(90)
    frame = pd.DataFrame({"tokens": [t for t, _ in rows], "tags": [g for _, g in rows]})
    crf = baseline(task_of(ner_config()), None, TYPES)
    fitted = crf.fit(frame.iloc[:50], frame.iloc[50:70], seed=0)
    assert crf.name == CRF_NAME and [(c["c1"], c["c2"]) for c in fitted.grid] == list(GRID)
    best = max(c["val_accuracy"] for c in fitted.grid)
    chosen = next(c for c in fitted.grid if c["val_accuracy"] == best)  # the first of equals
    assert [c for c in fitted.grid if c["chosen"]] == [chosen] and fitted.val_accuracy == best
    assert fitted.settings == {"c1": chosen["c1"], "c2": chosen["c2"]} and fitted.parameters > 0
    assert crf.accuracy(fitted.model, frame.iloc[70:]) > 0.9  # entity F1 on unseen sentences
