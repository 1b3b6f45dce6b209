"""Words and sub-tokens: a sentence's words tokenised by a fast tokenizer, each word's tag on its first
sub-token, and predictions read back per word.

Only a word's first sub-token is scored (the rest, special tokens and padding get IGNORE_INDEX): a word
has one tag however many pieces the tokenizer cuts it into, so each word counts once in the loss and in
the metrics, as in the CoNLL evaluation. Words past ``train.max_length`` sub-tokens are cut off: they are
never trained on, and are predicted ``O``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasks.kinds.base import IGNORE_INDEX, class_names

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TokenInputs:
    """Sub-token ids per sentence (unpadded), the word of each sub-token (None: a special token) and
    targets (N, T) on first sub-tokens (IGNORE_INDEX elsewhere), or None for unlabelled inputs."""

    ids: list[list[int]]
    words: list[list[int | None]]
    labels: torch.Tensor | None = None

    @property
    def sizes(self) -> list[int]:
        return [len(s) for s in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: list[int]) -> TokenInputs:
        return TokenInputs([self.ids[i] for i in indices], [self.words[i] for i in indices])


def tokenize_words(tokenizer: Any, sentences: list[list[str]], max_length: int) -> TokenInputs:
    """Pre-split sentences through a fast tokenizer (``is_split_into_words``), cut at `max_length`."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("token classification needs a fast tokenizer (its word_ids map sub-tokens to words)")
    if not sentences:
        return TokenInputs([], [])
    encoded = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length)
    return TokenInputs(encoded["input_ids"], [encoded.word_ids(i) for i in range(len(sentences))])


def first_subtoken_targets(words: list[int | None], tag_ids: list[int]) -> list[int]:
    """Per sub-token: the tag id of its word when it is the word's first piece, else IGNORE_INDEX."""
    out, previous = [], None
    for word in words:
        out.append(IGNORE_INDEX if word is None or word == previous else tag_ids[word])
        previous = word
    return out


def padded_targets(rows: list[list[int]]) -> torch.Tensor:
    """(N, T) targets padded with IGNORE_INDEX to the longest row."""
    import torch

    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def word_rows(logits: torch.Tensor, words: list[int | None], n_words: int) -> tuple[list[int], list[float]]:
    """A sentence's per-word tag ids and their probabilities from its per-position logits (T, C): each word
    read at its first sub-token; a word cut off by truncation is tag 0 (``O``) with probability 1."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    tags, scores = [0] * n_words, [1.0] * n_words
    seen: set[int] = set()
    for position, word in enumerate(words):
        if word is None or word in seen or position >= probs.shape[0]:
            continue
        seen.add(word)
        best = int(probs[position].argmax())
        tags[word], scores[word] = best, float(probs[position, best])
    return tags, scores


def tags_per_word(
    logits: torch.Tensor, inputs: TokenInputs, n_words: list[int], tags: list[str]
) -> tuple[list[list[str]], list[list[float]]]:
    """Per sentence, each word's predicted tag and its probability from per-position logits (N, T, C)
    in input order (``tasks.inference.predict_inputs``): what the metrics and the spans read."""
    out_tags, out_scores = [], []
    for row, words, count in zip(logits, inputs.words, n_words, strict=True):
        ids, scores = word_rows(row, words, count)
        out_tags.append([tags[i] for i in ids])
        out_scores.append(scores)
    return out_tags, out_scores


def predict_words(
    predictor: Any, sentences: list[list[str]], batch_size: int
) -> tuple[list[list[str]], list[list[float]], list[bool]]:
    """Per sentence: each word's predicted tag, its probability, and whether the model's outputs were all
    finite numbers. `predictor`: a tasks.inference.Predictor of a token-classification model."""
    import torch

    inference = importlib.import_module("tasks.inference")  # by name: see tasks/kinds/text.py _module
    inputs = predictor.kind.encode_items(sentences, predictor.processor)
    where = (predictor.kind, predictor.processor, predictor.device, predictor.precision)
    logits = inference.predict_inputs(predictor.model, inputs, batch_size, where)  # (N, T, C)
    lengths = [len(s) for s in sentences]
    tags, scores = tags_per_word(logits, inputs, lengths, class_names(predictor.model.config))
    finite = torch.isfinite(logits).flatten(1).all(1).tolist() if len(sentences) else []
    return tags, scores, finite
