"""Training with each strategy on the real MiniLM and real reviews: what adapts, what stays, and the cache.

Each strategy is trained for real on a few hundred reviews; the test compares every parameter with the
pretrained weights afterwards, so "frozen" means bit-for-bit unchanged and "adapting" means it moved.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tasks.config import ConfigError
from tasks.inference import collate, encode
from tasks.kinds.text import build_classifier as build_model
from tasks.kinds.text_forward import logits
from tasks.train import fine_tune, save_model
from tests.minilm import BASE, LABELS, block, load_reviews, train_cfg


@pytest.fixture(scope="module")
def reviews() -> tuple[pd.DataFrame, pd.DataFrame]:
    return load_reviews()


@pytest.fixture(scope="module")
def pretrained() -> dict[str, torch.Tensor]:
    model = build_model(BASE, LABELS)
    return {k: v.clone() for k, v in model.state_dict().items()}


def half(reviews: tuple[pd.DataFrame, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Half the reviews, for tests that compare two trainings rather than measure one: still balanced."""
    train, val = reviews
    return train.head(128), val.head(40)


def changed_blocks(model: torch.nn.Module, pretrained: dict[str, torch.Tensor]) -> dict[str, bool]:
    """block -> whether any of its pretrained weights moved (the new classifier is compared too)."""
    state = model.state_dict()
    out: dict[str, bool] = {}
    for name, before in pretrained.items():
        if name.endswith("position_ids") or name not in state:
            continue
        moved = not torch.equal(state[name], before)
        out[block(name)] = out.get(block(name), False) or moved
    return out


EXPECTED = {
    # strategy (+ settings) -> blocks that must move; every other block must stay bit-for-bit pretrained
    "head": ({}, {"head"}),
    "freeze": ({"freeze_layers": 4}, {"L4", "L5", "head"}),
    "full": ({}, {"embeddings", "L0", "L1", "L2", "L3", "L4", "L5", "head"}),
    # 16 steps, one more layer every 4: L5 from step 4, L4 from 8, L3 from 12; L2 (step 16) never
    "gradual": ({"unfreeze_every_steps": 4}, {"L3", "L4", "L5", "head"}),
}


@pytest.mark.parametrize("strategy", list(EXPECTED))
def test_each_strategy_trains_exactly_its_parameters(strategy, reviews, pretrained):
    settings, moving = EXPECTED[strategy]
    train, val = reviews
    model, _, result = fine_tune(BASE, train, val, LABELS, train_cfg(strategy=strategy, **settings))
    moved = changed_blocks(model, pretrained)
    assert {b for b, m in moved.items() if m} == moving, moved
    assert result.strategy == strategy and result.steps == 16
    assert (
        result.trainable_params == sum(v["trainable"] for v in result.layers.values())
        or strategy == "gradual"
    )
    total = sum(p.numel() for p in model.parameters())
    assert result.total_params == total
    if strategy == "head":
        assert result.trainable_params == result.layers["head"]["total"] < total // 100


def test_lora_trains_adapters_and_head_and_saves_both(reviews, pretrained, tmp_path):
    from transformers import AutoModelForSequenceClassification

    train, val = reviews
    cfg = train_cfg(strategy="lora", lora_rank=4, learning_rate=5e-4)
    model, tokenizer, result = fine_tune(BASE, train, val, LABELS, cfg)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "classifier" in n for n in names)
    assert result.trainable_params < 100_000 < result.total_params
    # the wrapped pretrained weights themselves did not move
    base_q = model.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer.weight
    assert torch.equal(base_q, pretrained["bert.encoder.layer.0.attention.self.query.weight"])

    ids, mask = collate(encode(tokenizer, val.text.tolist()[:8], 32), tokenizer.pad_token_id)
    model.eval()
    with torch.inference_mode():
        expected = model(input_ids=ids, attention_mask=mask).logits
        # training and scoring go through text_forward.logits: the LoRA-wrapped layers take the same shortcut
        torch.testing.assert_close(logits(model, ids, mask), expected, atol=1e-5, rtol=0)
    save_model(model, tokenizer, tmp_path / "m", {"labels": LABELS})
    assert (tmp_path / "m" / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())  # a plain model for serving
    with torch.inference_mode():
        torch.testing.assert_close(
            merged(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-4, rtol=0
        )


def test_cached_activations_train_the_same_model_as_the_uncached_path(reviews):
    train, val = half(reviews)
    cfg = train_cfg(strategy="freeze", freeze_layers=4, epochs=2)
    cached, _, r1 = fine_tune(BASE, train, val, LABELS, cfg.model_copy(update={"cache_frozen": True}))
    plain, _, r2 = fine_tune(BASE, train, val, LABELS, cfg.model_copy(update={"cache_frozen": False}))
    assert (r1.cached_layers, r2.cached_layers) == (4, 0)
    a, b = cached.state_dict(), plain.state_dict()
    assert not torch.equal(a["classifier.weight"], build_model(BASE, LABELS).classifier.weight)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)
    for h1, h2 in zip(r1.history, r2.history, strict=True):
        assert h1.train_loss == pytest.approx(h2.train_loss, abs=1e-5)
        assert h1.val_accuracy == h2.val_accuracy


def test_loss_falls_on_a_few_hundred_reviews(reviews):
    train, val = reviews
    # The top two layers adapt (the tests' tiny configuration): a third of the compute of all six.
    cfg = train_cfg(epochs=3, precision="auto", freeze_layers=4, learning_rate=3e-4)
    _, _, result = fine_tune(BASE, train, val, LABELS, cfg)
    losses = [h.train_loss for h in result.history]
    assert losses[0] > losses[1] > losses[2], losses
    assert result.best_val_accuracy > 0.6  # chance is 0.5 on this balanced validation set


@pytest.mark.parametrize("cache_frozen", [True, False])
def test_rdrop_trains_on_both_paths_and_changes_what_is_learned(reviews, cache_frozen):
    from transformers import AutoTokenizer

    train, val = half(reviews)
    cfg = train_cfg(strategy="freeze", freeze_layers=4, cache_frozen=cache_frozen, epochs=2)
    plain, _, _ = fine_tune(BASE, train, val, LABELS, cfg)
    rdrop, _, r1 = fine_tune(BASE, train, val, LABELS, cfg.model_copy(update={"rdrop_alpha": 1.0}))
    assert r1.cached_layers == (4 if cache_frozen else 0)
    assert r1.history[0].train_loss > r1.history[1].train_loss, r1.history
    # Same seed and batches: the agreement term alone moves the adapted weights.
    a, b = plain.state_dict()["classifier.weight"], rdrop.state_dict()["classifier.weight"]
    assert not torch.allclose(a, b)
    # The two halves of a doubled batch see different dropout masks (otherwise the term would be 0).
    rdrop.train()
    ids, mask = collate(encode(AutoTokenizer.from_pretrained(BASE), train["text"].head(8).tolist(), 32), 0)
    halves = logits(rdrop, ids.repeat(2, 1), mask.repeat(2, 1)).chunk(2)
    assert not torch.allclose(*halves)


def test_adversarial_training_trains_and_is_refused_where_embeddings_are_fixed(reviews):
    train, val = half(reviews)
    train, val = train.head(64), val.head(20)  # every layer trains, twice and on perturbed inputs: fewer
    cfg = train_cfg(strategy="full", epochs=2, learning_rate=5e-5, max_length=16)
    plain, _, _ = fine_tune(BASE, train, val, LABELS, cfg)
    adv, _, result = fine_tune(BASE, train, val, LABELS, cfg.model_copy(update={"adversarial_eps": 1.0}))
    assert result.history[0].train_loss > result.history[1].train_loss, result.history
    a, b = plain.state_dict()["classifier.weight"], adv.state_dict()["classifier.weight"]
    assert not torch.allclose(a, b)
    with pytest.raises(ConfigError, match=r"train\.adversarial_eps: 1 shifts the word embeddings.*'head'"):
        fine_tune(BASE, train, val, LABELS, train_cfg(strategy="head", adversarial_eps=1.0))


def test_early_stopping_stops_when_validation_accuracy_stalls(reviews):
    train, val = reviews
    # A learning rate this small cannot change any prediction: accuracy is flat from epoch 1.
    cfg = train_cfg(strategy="head", epochs=6, learning_rate=1e-12, early_stopping_patience=2)
    _, _, result = fine_tune(BASE, train, val, LABELS, cfg)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1
