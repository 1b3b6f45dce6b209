"""Raw text in, entity spans out: what serving and batch scoring answer for token classification.

The text is split on whitespace keeping each word's character offsets (the model was trained on words);
the fast tokenizer's offset mapping then gives each word's sub-tokens within it, so an entity's span can
leave out the punctuation glued to its words ("Paris," -> "Paris"). Every span slices the original string
back to its text: ``text[start:end] == span["text"]``, whitespace and punctuation preserved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tasks.kinds.token_align import predict_words
from tasks.kinds.token_tags import entities

_WORD = re.compile(r"\S+")
ENTITIES = "entities"  # the key of a text's spans in /predict answers and batch-predict tables


@dataclass(frozen=True)
class Word:
    text: str
    start: int  # character offsets into the input
    end: int


def split_words(text: str) -> list[Word]:
    """Whitespace-separated words with their character offsets."""
    return [Word(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def word_pieces(tokenizer: Any, words: list[Word]) -> list[list[tuple[int, int]]]:
    """Per word, the absolute character offsets of its sub-tokens (the fast tokenizer's offset mapping of
    the pre-split words, each offset relative to its word)."""
    if not words:
        return []
    encoded = tokenizer([w.text for w in words], is_split_into_words=True, return_offsets_mapping=True)
    pieces: list[list[tuple[int, int]]] = [[] for _ in words]
    for word, (start, end) in zip(encoded.word_ids(), encoded["offset_mapping"], strict=True):
        if word is not None and end > start:
            pieces[word].append((words[word].start + start, words[word].start + end))
    return pieces


def _trimmed(text: str, pieces: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """(start, end) narrowed to the first and last sub-token holding a letter or digit (the whole words when
    none does: an entity of punctuation is kept as tagged)."""
    inside = [(s, e) for s, e in pieces if start <= s and e <= end and any(c.isalnum() for c in text[s:e])]
    return (inside[0][0], inside[-1][1]) if inside else (start, end)


def entity_spans(
    text: str, words: list[Word], tags: list[str], scores: list[float], pieces: list[list[tuple[int, int]]]
) -> list[dict[str, Any]]:
    """The entities of the words' IOB2 tags as ``{type, text, start, end, score}`` (score: the mean
    probability of the entity's words' tags), in text order."""
    out = []
    for entity, first, stop in entities(tags):
        start, end = words[first].start, words[stop - 1].end
        start, end = _trimmed(text, [p for w in pieces[first:stop] for p in w], start, end)
        score = sum(scores[first:stop]) / (stop - first)
        out.append({"type": entity, "text": text[start:end], "start": start, "end": end, "score": score})
    return out


def predict_spans(predictor: Any, texts: list[str], batch_size: int) -> list[list[dict[str, Any]]]:
    """Per raw text, its entity spans (`predictor`: a tasks.inference.Predictor of a token-classification
    model). A text without words has none and is not run through the model."""
    words = [split_words(text) for text in texts]
    worded = [i for i, w in enumerate(words) if w]
    tags, scores, finite = predict_words(predictor, [[w.text for w in words[i]] for i in worded], batch_size)
    if not all(finite):
        raise ValueError(f"the model gave non-finite outputs on {finite.count(False)} of {len(worded)} texts")
    out: list[list[dict[str, Any]]] = [[] for _ in texts]
    tokenizer = predictor.processor.tokenizer
    for i, sentence_tags, sentence_scores in zip(worded, tags, scores, strict=True):
        pieces = word_pieces(tokenizer, words[i])
        out[i] = entity_spans(texts[i], words[i], sentence_tags, sentence_scores, pieces)
    return out
