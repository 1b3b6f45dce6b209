"""The transfer building blocks on the real MiniLM, without a training run: the split forward pass and its
shortcut, the strategies' plans, the regularisers' pieces and the inference cast. Training with each
strategy is tests/training/test_fine_tune.py."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tasks.config import ConfigError
from tasks.inference import collate, encode
from tasks.kinds.text import build_classifier as build_model
from tasks.kinds.text_forward import bottom, logits, top
from tasks.train import adversarial_embeddings, task_loss
from tasks.transfer import make_plan, set_trainable
from tests.minilm import BASE, LABELS, block, load_reviews, train_cfg

# What the text task answers for MiniLM: its inputs are not augmented, its forward pass splits at a layer.
TEXT = {"augmented": False, "cacheable": True}


@pytest.fixture(scope="module")
def reviews() -> tuple[pd.DataFrame, pd.DataFrame]:
    return load_reviews()


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


def test_gradual_plan_unfreezes_top_down():
    model = build_model(BASE, LABELS)
    plan = make_plan(
        train_cfg(strategy="gradual", unfreeze_every_steps=10), model, steps_per_epoch=30, **TEXT
    )
    assert [plan.frozen_layers_at(s) for s in (0, 9, 10, 25, 60, 1000)] == [6, 6, 5, 4, 0, 0]
    set_trainable(model, plan, 25)
    trainable = {block(n) for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"L4", "L5", "head"}
    per_epoch = make_plan(train_cfg(strategy="gradual"), model, steps_per_epoch=30, **TEXT)
    assert [per_epoch.frozen_layers_at(s) for s in (0, 29, 30, 60)] == [6, 6, 5, 4]


def test_bad_strategy_settings_are_refused_with_the_key():
    model = build_model(BASE, LABELS)
    with pytest.raises(ConfigError, match=r"train\.freeze_layers: 9 exceeds the model's 6 encoder layers"):
        make_plan(train_cfg(strategy="freeze", freeze_layers=9), model, steps_per_epoch=10, **TEXT)
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
    # bf16 matmuls are slow on CPUs without bf16 units: a dozen reviews cover one-row and padded batches.
    encoded = encode(tok, reviews[1]["text"].tolist()[:12], 48)
    cpu = torch.device("cpu")
    for batch_size in (1, 8):
        want = predict_logits(model, encoded, tok.pad_token_id, batch_size, cpu, precision)
        got = predict_logits(cast, encoded, tok.pad_token_id, batch_size, cpu, precision)
        if precision == "fp32":
            assert torch.equal(want, got)
        else:  # an untrained head's logits are small: the tolerance is a few bf16 rounding steps
            assert got.dtype == torch.float32 and torch.isfinite(got).all()
            assert torch.allclose(got, want, atol=0.005), (got - want).abs().max()
