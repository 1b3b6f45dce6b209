"""What serving and batch scoring read for token classification: raw texts, from a JSON or JSONL body, or
from a table's text column.

A POST /predict body is ``{"texts": [...]}`` (as for text classification), ``{"text": "..."}`` for one
text, or JSON Lines of ``{"text": ...}`` objects; a text is kept exactly as sent (whitespace and
punctuation included), since the answer's character offsets index it.
"""

from __future__ import annotations

import json
from typing import Any

from tasks.kinds.base import RequestError
from tasks.kinds.text_requests import parse_predict_body

TEXT_FIELD = "text"


def _texts_of_lines(body: bytes) -> list[Any]:
    """The ``text`` of each non-blank line of a JSON Lines body (RequestError 400/422 naming the line)."""
    texts = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise RequestError(400, f"line {number} is not valid JSON") from None
        if not isinstance(row, dict) or TEXT_FIELD not in row:
            raise RequestError(
                422, [{"loc": ["line", number], "msg": f"an object with a {TEXT_FIELD!r} field"}]
            )
        texts.append(row[TEXT_FIELD])
    return texts


def parse_request(body: bytes, content_type: str, max_batch: int) -> list[str]:
    """The raw texts of a POST /predict body; RequestError 400 (not JSON), 422 (wrong shape, a text that
    is not a string) or 413 (more than `max_batch` texts). Errors never echo the input back."""
    try:  # the whole body first: a pretty-printed object spans lines too
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        texts = _texts_of_lines(body)
    else:
        if isinstance(data, dict) and set(data) == {TEXT_FIELD}:
            texts = [data[TEXT_FIELD]]
        else:
            # {"texts": [...]}: the text task's body, with its checks and errors
            return parse_predict_body(body, max_batch)
    if not texts:
        raise RequestError(422, [{"loc": [TEXT_FIELD], "msg": "no texts"}])
    if len(texts) > max_batch:
        raise RequestError(
            413, f"{len(texts)} texts exceed the limit of {max_batch} per request (--max-batch)"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, [{"loc": [TEXT_FIELD, i], "msg": "not a string"}])
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: not text the tokenizer accepts
            raise RequestError(
                422, [{"loc": [TEXT_FIELD, i], "msg": "not valid Unicode (lone surrogate)"}]
            ) from None
    return texts
