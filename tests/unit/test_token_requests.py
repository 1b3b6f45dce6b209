"""POST /predict bodies of token classification: raw texts from JSON or JSON Lines, refused with the 4xx
that says what to fix."""

from __future__ import annotations

import json

import pytest

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
