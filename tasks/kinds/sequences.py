"""Variable-length token sequences: the token ids of texts, their padding into a batch, and batches of
similar length. Used wherever texts meet a model: training, inference, the text and token tasks, drift.
torch is imported inside `collate`.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated to `max_length`, unpadded (batches are padded by `collate`)."""
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def padding_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id `collate` pads with: the tokenizer's padding token, 0 for one that has none."""
    return tokenizer.pad_token_id or 0


def collate(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence of the batch: (input_ids, attention_mask), each (B, T)."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar-length examples (shortest first): little padding for inference passes."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of similar-length examples, in random order: little padding, still shuffled each epoch.

    Examples are shuffled, cut into windows of 50 batches, sorted by length inside a window, then the
    batches are shuffled; so batch composition changes every epoch while padding stays small.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches
