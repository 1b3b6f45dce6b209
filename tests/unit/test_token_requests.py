"""POST /predict bodies of token classification: raw texts from JSON or JSON Lines, refused with the 4xx
that says what to fix."""

from __future__ import annotations

import json

import pytest

from tasks.kinds.base import RequestError
from tasks.kinds.token_requests import parse_request

TEXT = "  Ada Lovelace\tmet Charles Babbage in London.  "


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"text": TEXT}),
        json.dumps({"texts": [TEXT, "nothing here"]}),
        json.dumps({"text": TEXT}) + "\n\n" + json.dumps({"text": "nothing here"}) + "\n",
    ],
    ids=["one text", "texts", "json lines"],
)
def test_texts_are_read_exactly_as_sent(body: str):
    texts = parse_request(body.encode(), "application/json", max_batch=4)
    assert texts[0] == TEXT and texts[1:] in ([], ["nothing here"])


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json at all", 400),
        (b'{"text": 3}', 422),
        (json.dumps({"text": "a"}).encode() + b'\n{"words": ["a"]}\n', 422),
        (b"\n".join(json.dumps({"text": f"t{i}"}).encode() for i in range(5)), 413),
        (json.dumps({"texts": ["a"] * 5}).encode(), 413),
        (b'{"text": "\\ud800"}', 422),
    ],
    ids=["not json", "not a string", "a line without text", "too many lines", "too many texts", "surrogate"],
)
def test_bad_bodies_are_refused_with_what_to_fix(body: bytes, status: int):
    with pytest.raises(RequestError) as refused:
        parse_request(body, "application/x-ndjson", max_batch=4)
    assert refused.value.status == status
