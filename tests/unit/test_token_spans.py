"""Entity spans over raw text: offsets that slice the input back, punctuation glued to a word left out."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tasks.kinds.token_spans import entity_spans, split_words, word_pieces
from tests.minilm import BASE


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(BASE)


def test_spans_slice_the_original_string_and_leave_glued_punctuation_out(tokenizer):
    text = "  Ada Lovelace\tvisited Paris,  then\n(New York)!  "
    words = split_words(text)
    assert [w.text for w in words] == ["Ada", "Lovelace", "visited", "Paris,", "then", "(New", "York)!"]
    assert all(text[w.start : w.end] == w.text for w in words)
    tags = ["B-person", "I-person", "O", "B-geo-loc", "O", "B-geo-loc", "I-geo-loc"]
    scores = [0.9, 0.7, 1.0, 0.6, 1.0, 0.8, 0.6]
    spans = entity_spans(text, words, tags, scores, word_pieces(tokenizer, words))
    assert [(s["type"], s["text"]) for s in spans] == [
        ("person", "Ada Lovelace"),
        ("geo-loc", "Paris"),
        ("geo-loc", "New York"),
    ]
    assert all(text[s["start"] : s["end"]] == s["text"] for s in spans)
    assert spans[0]["score"] == pytest.approx(0.8) and spans[2]["score"] == pytest.approx(0.7)


def test_no_words_no_spans_and_a_punctuation_entity_is_kept_as_tagged(tokenizer):
    assert split_words(" \n ") == [] and word_pieces(tokenizer, []) == []
    text = "call :) now"
    words = split_words(text)
    spans = entity_spans(text, words, ["O", "B-other", "O"], [1.0, 0.5, 1.0], word_pieces(tokenizer, words))
    assert spans == [{"type": "other", "text": ":)", "start": 5, "end": 7, "score": 0.5}]
