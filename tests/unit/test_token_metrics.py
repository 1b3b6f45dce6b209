"""Entity-level scores (seqeval, exact span and type) and the paired bootstrap of the F1 difference."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.kinds.token_metrics import entity_scores, f1_drops, micro_f1, paired_bootstrap_f1, sentence_counts
from tasks.stats import paired_bootstrap_ci

TRUTH = [["B-person", "I-person", "O", "B-geo-loc"], ["O", "B-geo-loc", "I-geo-loc"], ["B-person"]]
# a wrong span, a right place, a right place, a missed person
PRED = [["B-person", "O", "O", "B-geo-loc"], ["O", "B-geo-loc", "I-geo-loc"], ["O"]]


def test_an_entity_counts_only_with_its_exact_span_and_type():
    scores = entity_scores(TRUTH, PRED, ["person", "geo-loc", "company"])
    assert scores.precision == pytest.approx(2 / 3) and scores.recall == pytest.approx(2 / 4)
    assert scores.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert scores.per_type["geo-loc"].f1 == 1.0 and scores.per_type["person"].recall == 0.0
    assert scores.per_type["person"].support == 2 and scores.per_type["company"].f1 == 0.0
    counts = sentence_counts(TRUTH, PRED)
    assert counts.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 1]]
    assert micro_f1(counts.sum(0)) == pytest.approx(scores.f1)  # per-sentence counts add up to seqeval's


def test_the_paired_bootstrap_of_f1_is_deterministic_and_pairs_the_sentences():
    rng = np.random.default_rng(0)
    gold = rng.integers(1, 4, size=200)
    better = np.stack([gold, np.zeros(200, int), np.zeros(200, int)], 1)  # every entity found
    worse = np.stack([gold - (rng.random(200) < 0.3), np.zeros(200, int), (rng.random(200) < 0.3)], 1)
    ci = paired_bootstrap_f1(better, worse, samples=500, alpha=0.05, seed=1)
    assert ci.low > 0 and ci.contains(ci.estimate)
    assert ci == paired_bootstrap_f1(better, worse, samples=500, alpha=0.05, seed=1)
    same = paired_bootstrap_f1(better, better, samples=200, alpha=0.05, seed=1)
    assert same.low == same.high == same.estimate == 0.0
    # one entity per sentence, found or not: F1 = 2k / (k + n) rises with accuracy k / n, and the same
    # seed draws the same sentences, so both intervals agree on which model is better
    one = np.ones(300, int)
    a_found, b_found = rng.random(300) < 0.8, rng.random(300) < 0.6
    as_counts = [np.stack([f * one, 0 * one, (~f) * one], 1) for f in (a_found, b_found)]
    f1_ci = paired_bootstrap_f1(*as_counts, samples=300, alpha=0.1, seed=3)
    acc_ci = paired_bootstrap_ci(a_found, b_found, samples=300, alpha=0.1, seed=3)
    assert f1_ci.low > 0 and acc_ci.low > 0
    with pytest.raises(ValueError, match="same sentences"):
        paired_bootstrap_f1(better, better[:10], samples=10, alpha=0.05, seed=0)


def test_per_type_f1_drops():
    champion = entity_scores(TRUTH, TRUTH, ["person", "geo-loc"])
    challenger = entity_scores(TRUTH, PRED, ["person", "geo-loc"])
    assert f1_drops(challenger.per_type, champion.per_type) == {"person": pytest.approx(1.0), "geo-loc": 0.0}


def test_the_crf_baseline_learns_the_synthetic_entities():
    import pandas as pd

    from tasks.kinds.token_crf import fit, score, sentence_features
    from tests.data.sentences import TYPES, corpus

    rows = corpus(80)
    frame = pd.DataFrame({"tokens": [t for t, _ in rows], "tags": [g for _, g in rows]})
    run = score(fit(frame.iloc[:60]), frame.iloc[60:], TYPES)
    assert run.scores.f1 > 0.9 and len(run.predictions) == 20
    features = sentence_features(["@ada", "visited", "http://x.io"])
    assert features[0]["mention"] and features[0]["start"] and features[2]["url"] and features[2]["end"]
    assert features[1]["-1:lower"] == "@ada" and features[1]["+1:url"]


def test_training_keeps_the_epoch_by_entity_f1_of_first_subtokens_not_word_accuracy():
    import torch

    from tasks.config import load_config
    from tasks.kinds import task_of
    from tasks.kinds.base import IGNORE_INDEX
    from tasks.kinds.token_tags import tag_names
    from tests.conftest import ROOT

    classes = tag_names(["person", "geo-loc", "company"])
    ids = {tag: i for i, tag in enumerate(classes)}
    # per sentence: a special token, then each word's first sub-token (a later one ignored), then padding
    width = 1 + max(len(s) for s in TRUTH) * 2 + 1
    targets = torch.full((len(TRUTH), width), IGNORE_INDEX)
    logits = torch.zeros((len(TRUTH), width - 1, len(classes)))  # a batch shorter than the split's padding
    for i, (truth, pred) in enumerate(zip(TRUTH, PRED, strict=True)):
        for j, (t, p) in enumerate(zip(truth, pred, strict=True)):
            targets[i, 1 + 2 * j] = ids[t]
            logits[i, 1 + 2 * j, ids[p]] = 5.0
            logits[i, 2 + 2 * j, ids["B-company"]] = 9.0  # a later sub-token: never read
    kind = task_of(load_config(ROOT / "params.yaml", {"task.type": "token-classification"}))
    assert kind.validation_metric == "entity F1"
    assert kind.validation_score(logits, targets, classes) == pytest.approx(
        entity_scores(TRUTH, PRED, ["person", "geo-loc", "company"]).f1
    )  # 0.57, where the words' accuracy would be 6/8
