"""The strategy search of `train.strategy: auto` training the real MiniLM on a few hundred real reviews:
trials share what their fixed layers compute, and a search keeps to its time budget and is resumed from
its record. The schedule's arithmetic alone is tests/unit/test_search.py."""

from __future__ import annotations

import hashlib
import time

import pandas as pd
import pytest

from tasks.inference import encode
from tasks.search import RECORD_FILE, candidates, run_search
from tasks.train import FrozenActivations, fine_tune
from tests.minilm import BASE, LABELS, load_reviews, train_cfg

# Seconds of the search under test: its trials (batches of 4 texts of up to 16 tokens) take a second or
# two, so this holds loading the model's code cold, the calibration and several trials on a busy machine.
BUDGET_S = 20.0


@pytest.fixture(scope="module")
def reviews() -> tuple[pd.DataFrame, pd.DataFrame]:
    return load_reviews()


def test_trials_share_the_outputs_of_the_layers_they_fix(reviews):
    from transformers import AutoTokenizer

    train, val = reviews[0].head(64), reviews[1].head(32)  # what is shared, not what is learnt
    kept = FrozenActivations()
    cfg = train_cfg(strategy="freeze", freeze_layers=4, cache_frozen=True)
    _, _, alone = fine_tune(BASE, train, val, LABELS, cfg)
    _, _, first = fine_tune(BASE, train, val, LABELS, cfg, activations=kept)
    texts = [*train.text, *val.text]
    distinct = len({tuple(ids) for ids in encode(AutoTokenizer.from_pretrained(BASE), texts, cfg.max_length)})
    assert (kept.computed, kept.reused) == (distinct, len(texts) - distinct)
    assert losses(first) == losses(alone)  # computed exactly as without the store
    faster = cfg.model_copy(update={"learning_rate": 3e-4})
    _, _, second = fine_tune(BASE, train, val, LABELS, faster, activations=kept)
    assert kept.computed == distinct and kept.reused == 2 * len(texts) - distinct  # nothing computed again
    assert second.cached_layers == 4 and losses(second) != losses(first)


def losses(result) -> list[tuple[float, float]]:
    return [(h.train_loss, h.val_accuracy) for h in result.history]


def test_the_search_stays_within_its_budget_and_resumes_from_its_record(reviews, tmp_path):
    train, val = reviews
    budget = BUDGET_S
    cfg = train_cfg(
        strategy="auto", epochs=3, batch_size=4, max_length=16, time_budget_s=budget, precision="auto"
    )
    record = tmp_path / "checkpoints" / RECORD_FILE
    started = time.perf_counter()
    found, kept, trained = run_search(BASE, train, val, LABELS, cfg, record)
    assert time.perf_counter() - started <= 1.2 * budget
    assert len(found.trials) >= 3
    assert sum(t.seconds for t in found.trials) <= found.seconds <= 1.2 * budget
    assert found.chosen in candidates()
    best = found.best()
    assert best.round == max(t.round for t in found.trials)
    assert all(best.val_accuracy >= t.val_accuracy for t in found.trials if t.round == best.round)
    whole = best.rows == len(train) and best.epochs == cfg.epochs
    assert (trained is not None) == whole  # the chosen one's model is kept only if it trained in full
    assert (kept is not None) == (best.cached_layers > 0 and not whole)

    started = time.perf_counter()
    again, _, retrain = run_search(BASE, train, val, LABELS, cfg, record)  # a restarted run: no trial again
    assert time.perf_counter() - started < 2
    assert again.to_dict() == found.to_dict() and retrain is None  # the model was not kept on disk


def test_a_search_whose_last_round_trained_in_full_keeps_that_model(reviews):
    """32 training rows and one epoch: round 0 already trains every candidate on all of them, so the
    chosen one needs no second training; its trial's model is returned, the others are not kept."""
    train, val = reviews[0].head(32), reviews[1].head(16)
    # A budget that round 0 cannot use up on 4 steps a trial even on a busy machine: the search ends there.
    cfg = train_cfg(strategy="auto", epochs=1, batch_size=8, max_length=16, time_budget_s=3 * BUDGET_S)
    found, activations, trained = run_search(BASE, train, val, LABELS, cfg)
    assert found.stopped == "round 0 already trained on every row for train.epochs", found.stopped
    best = found.best()
    assert trained is not None and found.trials[trained.trial - 1] is best and activations is None
    assert (best.rows, best.epochs) == (32, 1) and best.round == 0
    assert trained.result.best_val_accuracy == best.val_accuracy
    assert trained.result.strategy == found.chosen.strategy
    logits = trained.model(**trained.processor(list(val.text.head(2)), return_tensors="pt", padding=True))
    assert logits.logits.shape == (2, len(LABELS))


def test_auto_searches_an_image_model_with_the_image_candidates(tmp_path):
    """The same search over EfficientNet-Lite0 on lfw_subset crops (32 pixels): trials train through the
    image task, on its candidates, within the budget; head and freeze trials share their cached layers."""
    from tasks.kinds import load_task
    from tasks.search import IMAGE_SEARCH_SPACE
    from tests.data.images import converted_model, lfw_folder
    from tests.unit.test_image_kind import options

    base = converted_model(tmp_path / "base")
    folder = lfw_folder(tmp_path / "lfw", per_class=24)
    files = sorted(folder.rglob("*.png"))
    frame = pd.DataFrame(
        {
            "image": [str(f.relative_to(folder)) for f in files],
            "label": [f.parent.name for f in files],
            "sha256": [hashlib.sha256(f.read_bytes()).hexdigest() for f in files],
        }
    )
    train, val = frame[frame.index % 4 != 0], frame[frame.index % 4 == 0]  # 36 and 12 images
    kind = load_task("image-classification", options(size=32, augment_crop_scale=1.0, augment_flip=False))
    budget = 40.0
    cfg = train_cfg(
        strategy="auto", epochs=2, batch_size=8, time_budget_s=budget, num_threads=1,
        lora_target_modules=["conv_pw", "conv_pwl", "conv_head"],  # as the image example sets them
    )  # fmt: skip
    started = time.perf_counter()
    found, _, _ = run_search(base, train, val, ["face", "other"], cfg, task=(kind, folder))
    assert time.perf_counter() - started <= 1.3 * budget
    image_candidates = candidates(IMAGE_SEARCH_SPACE)
    assert found.chosen in image_candidates and len(found.trials) >= 3
    assert all(t.candidate in image_candidates for t in found.trials)
    assert {t.cached_layers for t in found.trials if t.strategy == "head"} <= {8}
    assert {t.cached_layers for t in found.trials if t.strategy == "freeze"} <= {5}
