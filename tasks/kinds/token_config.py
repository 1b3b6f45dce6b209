"""The ``ner`` section of params.yaml, typed: what only token classification reads.

Like every section (tasks/config.py) it has no defaults of its own: params.yaml sets every key, with its
comment. The entity *types* are declared in ``data.labels`` (e.g. ``[person, geo-loc]``); the tags the
model predicts are derived from them (``O``, ``B-person``, ``I-person``, …: tasks/kinds/token_tags.py).
``data.label_map`` renames source types to declared ones (``{loc: geo-loc}``). The generic keys keep their
places: ``validate.max_duplicate_rate`` (repeated sentences), ``validate.reference_label_tolerance`` (tag
shares against the champion's data), ``data.*`` sizes and seed, all of ``train``, ``evaluate``, ``gate``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Scheme = Literal["IOB2", "IOB1"]


class NerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens_column: str = Field(min_length=1)  # JSONL / hf-dataset:// field holding each sentence's tokens
    tags_column: str = Field(min_length=1)  # the field holding its tags (names, or a Hub ClassLabel's ids)
    conll_token_index: int  # CoNLL files: column of the token on each line (0 = first; -1 = last)
    conll_tag_index: int  # CoNLL files: column of the tag (-1 = last)
    conll_delimiter: str = Field(min_length=1)  # CoNLL files: what separates the columns of a line
    scheme: Scheme  # the source's tags: IOB2 (every entity opens with B-) or IOB1 (B- only between twins)
    repair_iob: bool  # true: an I-X after O / another type becomes B-X (counted); false: refused
    min_tokens: int = Field(ge=1)  # shortest accepted sentence, in tokens
    max_tokens: int = Field(ge=1)  # longest accepted sentence, in tokens
    min_entities_per_type: int = Field(ge=0)  # fewest training entities any declared type may have
    reference_length_tolerance: float = Field(gt=0)  # vs champion: relative change of length q10/q50/q90

    @model_validator(mode="after")
    def _check(self) -> NerConfig:
        if self.max_tokens < self.min_tokens:
            raise ValueError("max_tokens must be >= min_tokens")
        if self.conll_token_index == self.conll_tag_index:
            raise ValueError("conll_token_index and conll_tag_index must differ")
        if self.tokens_column == self.tags_column:
            raise ValueError("tokens_column and tags_column must differ")
        return self
