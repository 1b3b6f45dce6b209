"""The text task's request body: POST /predict {"texts": [...]}, parsed with short errors that never echo
the input back (it can be a megabyte)."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from tasks.kinds.base import RequestError


class PredictRequest(BaseModel):
    """The body of POST /predict."""

    # strict: a number where a text belongs is an error, not silently turned into "3"
    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[str] = Field(min_length=1, description="texts to classify (at most --max-batch)")


def parse_predict_body(body: bytes, max_batch: int) -> list[str]:
    """The texts of a POST /predict body; RequestError 400 (not JSON), 422 (wrong shape or types) or 413
    (too many texts). Errors never echo the input back: it can be a megabyte."""
    from pydantic import ValidationError

    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON: {err}") from None
    except RecursionError:  # e.g. 100 000 nested '[' fit in a small body; without this: a 500
        raise RequestError(400, "the body is not valid JSON: nested too deeply") from None
    try:
        texts = PredictRequest.model_validate(data).texts
    except ValidationError as err:
        problems = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in err.errors(include_input=False)[:10]]
        raise RequestError(422, problems) from None
    if len(texts) > max_batch:
        raise RequestError(
            413, f"{len(texts)} texts exceed the limit of {max_batch} per request (--max-batch)"
        )
    for i, text in enumerate(texts):
        # JSON may escape a lone surrogate ("\ud800"): a Python str, but not text the tokenizer accepts
        # (it raises TypeError, which would be a 500)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            problem = {"loc": ["texts", i], "msg": "not valid Unicode (lone surrogate)"}
            raise RequestError(422, [problem]) from None
    return texts
