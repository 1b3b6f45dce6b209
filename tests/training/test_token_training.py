"""Token classification through the training loop on the real MiniLM: sub-word alignment, the per-position
forward split the activation cache relies on, and the loss falling on tagged sentences."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tasks.inference import predict_inputs
from tasks.kinds import task_of
from tasks.kinds.base import IGNORE_INDEX
from tasks.kinds.token_align import first_subtoken_targets, tags_per_word, word_rows
from tasks.kinds.token_metrics import entity_scores
from tasks.kinds.token_tags import tag_names
from tasks.train import fine_tune, save_model, task_loss
from tests.data.sentences import TYPES, corpus, ner_config
from tests.minilm import BASE, train_cfg


def frame(rows: list) -> pd.DataFrame:
    return pd.DataFrame({"sentence": [f"s:{i}" for i in range(len(rows))], "tokens": [t for t, _ in rows],
                         "tags": [g for _, g in rows]})  # fmt: skip


@pytest.fixture(scope="module")
def kind():
    return task_of(ner_config())


def test_a_word_is_tagged_on_its_first_sub_token_only(kind):
    processor = kind.processor(BASE, 16)
    rows = [(["Kyoto-ku", "rocks", "tonight", "#tag"], ["B-geo-loc", "O", "O", "O"])]
    inputs = kind.encode(frame(rows), None, TYPES, processor)
    words = inputs.words[0]
    assert words[0] is None and words[-1] is None and words.count(0) > 1  # Kyoto-ku: several pieces
    assert inputs.labels[0].tolist() == first_subtoken_targets(words, [3, 0, 0, 0])
    assert inputs.labels[0].tolist()[:3] == [IGNORE_INDEX, 3, IGNORE_INDEX]
    cut = kind.encode(frame([(["a"] * 30, ["O"] * 30)]), None, TYPES, kind.processor(BASE, 8))
    assert len(cut.ids[0]) == 8  # truncated: the words past the cut have no target
    logits = torch.full((len(words), 5), -5.0)
    logits[1, 3] = 5.0  # Kyoto-ku's first piece says B-geo-loc
    tags, scores = word_rows(logits, words, 5)
    assert tags == [3, 0, 0, 0, 0] and scores[4] == 1.0 and scores[0] > 0.99  # word 4 was never seen


def test_per_position_loss_scores_only_first_sub_tokens():
    logits = torch.randn(2, 3, 5)
    target = torch.tensor([[IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX], [2, 0, 4, IGNORE_INDEX]])
    want = torch.nn.functional.cross_entropy(logits[[0, 1, 1, 1], [1, 0, 1, 2]], torch.tensor([1, 2, 0, 4]))
    assert torch.allclose(task_loss(logits, target), want)
    doubled = task_loss(torch.cat([logits, logits]), target, rdrop_alpha=1.0)  # identical passes: no KL
    assert torch.allclose(doubled, want)


@pytest.mark.parametrize("depth", [0, 3, 6])
def test_top_of_bottom_is_the_forward_pass_at_every_depth(kind, depth):
    model = kind.build_model(BASE, TYPES).eval()
    processor = kind.processor(BASE, 32)
    inputs = kind.encode(frame(corpus(4)), None, TYPES, processor)
    batch = kind.collate(inputs, [0, 1, 2, 3], processor)
    with torch.no_grad():
        full = kind.logits(model, batch)
        split = kind.top(model, kind.stack_hidden(kind.split_hidden(kind.bottom(model, batch, depth))), depth)
    assert full.shape == (4, batch["input_ids"].shape[1], 5)
    real = batch["attention_mask"].bool()
    assert torch.allclose(full[real], split[real], atol=1e-4)


def test_the_loss_falls_with_the_cached_encoder_and_the_model_saves(kind, tmp_path):
    rows = corpus(60)
    cfg = train_cfg(
        strategy="freeze", freeze_layers=4, cache_frozen=True, epochs=4, batch_size=8, learning_rate=5e-3
    )
    model, processor, result = fine_tune(BASE, frame(rows[:48]), frame(rows[48:]), TYPES, cfg, kind=kind)
    losses = [h.train_loss for h in result.history]
    assert result.cached_layers == 4 and losses[-1] < losses[0] * 0.5, losses
    val = frame(rows[48:])
    inputs = kind.encode_items(kind.items(val, None), processor)
    logits = predict_inputs(model, inputs, 8, (kind, processor, torch.device("cpu"), "fp32"))
    predicted, _ = tags_per_word(logits, inputs, [len(t) for t in val["tokens"]], tag_names(TYPES))
    f1 = entity_scores(list(val["tags"]), predicted, TYPES).f1
    assert f1 > 0.8  # exact spans, on unseen sentences
    # the epoch was kept by the entity F1 of its words' first sub-tokens: the returned model's validation F1
    assert result.best_val_accuracy == pytest.approx(f1)
    save_model(model, processor, tmp_path / "m", {"task": {"type": kind.name}}, kind)
    loaded = kind.load_model(tmp_path / "m")
    assert loaded.config.id2label[3] == "B-geo-loc"


def test_lora_trains_the_token_head(kind):
    rows = corpus(24)
    cfg = train_cfg(strategy="lora", lora_target_modules=["query", "value"], epochs=1)
    model, _, result = fine_tune(BASE, frame(rows[:16]), frame(rows[16:]), TYPES, cfg, kind=kind)
    assert result.strategy == "lora" and hasattr(model, "merge_and_unload")


def test_auto_searches_a_tagger_by_validation_entity_f1(kind):
    """`train.strategy: auto` on a tagger: every trial trains through the token task and is judged on
    validation entity F1 (its loss per labelled token breaking ties), within the budget."""
    import time

    from tasks.search import candidates, run_search

    rows = corpus(64)
    tagged = frame(rows).assign(text=[" ".join(t) for t, _ in rows], label="person")  # as prepare writes them
    budget = 30.0
    cfg = train_cfg(strategy="auto", epochs=2, batch_size=8, time_budget_s=budget, num_threads=1,
                    lora_target_modules=["query", "value"])  # fmt: skip
    started = time.perf_counter()
    found, _, _ = run_search(BASE, tagged[:48], tagged[48:], TYPES, cfg, task=(kind, None))
    assert time.perf_counter() - started <= 1.3 * budget
    assert found.chosen in candidates() and len(found.trials) >= 3
    assert all(0.0 <= t.val_accuracy <= 1.0 and t.val_loss > 0 for t in found.trials)
    assert max(t.val_accuracy for t in found.trials) > 0.5  # entity F1: the synthetic entities are learnable
