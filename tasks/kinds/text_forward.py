"""The forward pass of a BERT-like text encoder, split at a layer: what the activation cache and the
text and token tasks' scoring run.

``bottom(ids, mask, depth)`` runs the embeddings and the lowest ``depth`` layers, ``top(hidden, mask,
depth)`` the rest and the head, so layers a strategy keeps fixed (in eval mode: no dropout, the same output
for an example every epoch) are computed once and cached; ``top(bottom(x, d), d)`` equals the model's own
forward pass (tests/unit/test_transfer.py). Other architectures get no cache and run their own forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# Architectures whose forward pass `bottom`/`top` reproduce (embeddings -> layer list -> pooler -> head).
CACHEABLE_MODEL_TYPES = ("bert",)


def encoder(model: PreTrainedModel) -> Any:
    """The pretrained encoder under the task head (``model.bert`` for BERT)."""
    return getattr(model, model.base_model_prefix)


def attention_mask_for(base: Any, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Any:
    """The encoder's own attention mask for padded (B, T) rows, in the form its attention wants."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask)


def bottom(
    model: PreTrainedModel, ids: torch.Tensor, attention_mask: torch.Tensor, depth: int
) -> torch.Tensor:
    """Hidden states after the embeddings and the lowest `depth` layers: (B, T, H)."""
    base = encoder(model)
    hidden = base.embeddings(input_ids=ids)
    mask = attention_mask_for(base, hidden, attention_mask)
    for layer in base.encoder.layer[:depth]:
        hidden = layer(hidden, mask)
    return hidden


def top(
    model: PreTrainedModel, hidden: torch.Tensor, attention_mask: torch.Tensor, depth: int
) -> torch.Tensor:
    """Logits from hidden states after layer `depth`: the rest of the model's own forward pass, its last
    layer evaluated at the first position only (`_first_position`)."""
    base = encoder(model)
    mask = attention_mask_for(base, hidden, attention_mask)
    layers = base.encoder.layer[depth:]
    for layer in layers[:-1]:
        hidden = layer(hidden, mask)
    if len(layers):
        hidden = _first_position(layers[-1], hidden, mask)
    pooled = base.pooler(hidden) if base.pooler is not None else hidden[:, 0]
    return model.classifier(model.dropout(pooled))


def logits(model: PreTrainedModel, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The model's logits (B, C): the one forward pass of training, evaluation and serving."""
    if model.config.model_type not in CACHEABLE_MODEL_TYPES:
        return model(input_ids=ids, attention_mask=attention_mask).logits
    return top(model, encoder(model).embeddings(input_ids=ids), attention_mask, 0)


def _first_position(layer: Any, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
    """`layer(hidden, mask)[:, :1]`, without computing the other positions.

    The head reads only the first ([CLS]) position of the last layer, and that position depends on the others
    only through their keys and values: the queries, attention output and feed-forward of the other T-1
    positions are work nobody reads (in the last layer: queries, attention output and feed-forward are 10 of
    its 12 d x d matmul units per position, the keys and values the other 2). Same modules, same dropout;
    logits equal to float tolerance (tests/unit/test_transfer.py)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    attn = layer.attention.self
    batch = hidden.shape[0]
    first = hidden[:, :1]

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, x.shape[1], -1, attn.attention_head_size).transpose(1, 2)

    attend = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)
    context, _ = attend(
        attn,
        heads(attn.query(first)),
        heads(attn.key(hidden)),
        heads(attn.value(hidden)),
        None if mask is None else mask[:, :, :1],
        dropout=attn.dropout.p if attn.training else 0.0,
        scaling=attn.scaling,
    )
    out = layer.attention.output(context.reshape(batch, 1, -1), first)
    return layer.output(layer.intermediate(out), out)
