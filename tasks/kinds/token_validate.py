"""Token-classification validation: the Great Expectations suite over the prepared sentences.

Tables and their expectations (each a real GX expectation, as for text and images):

* ``train`` / ``validation`` / ``test``: each split has the ``sentence``, ``tokens`` and ``tags`` columns.
* ``sentences`` (all splits, one row per sentence, with ``split`` and where it came from): as many tags as
  tokens; no empty sentence; length in [``ner.min_tokens``, ``ner.max_tokens``]; no ``I-X`` opening an
  entity (after ``O``, another type, or first) — with ``ner.repair_iob`` prepare has turned those into
  ``B-X`` and the detail counts them; the duplicate rate of the text at most
  ``validate.max_duplicate_rate``.
* ``tags`` (one row per token): every tag is ``O`` or ``B-``/``I-`` of a type in ``data.labels``.
* ``entity_counts`` (one row per declared type): at least ``ner.min_entities_per_type`` train entities.
* ``split_overlap`` (one row per sentence found in more than one split): must be empty.

Against a reference (the champion's training split, the same columns):

* ``reference_label_shares`` (one row per tag): each tag's share of the train tokens within
  ``validate.reference_label_tolerance`` of its share in the reference (the text suite's check, over tags).
* ``reference_sentence_lengths``: length quantiles (q10, q50, q90; nearest rank) each within
  ± ``ner.reference_length_tolerance`` (relative) of the reference's.

Every failing detail names the sentences (file and lines, or row) so the source can be fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tasks import validate as suite
from tasks.config import ValidateConfig
from tasks.kinds.token_config import NerConfig
from tasks.kinds.token_sources import REPAIRED, SENTENCE, TAGS, TEXT, TOKENS, as_lists
from tasks.kinds.token_tags import entities, opening_inside, tag_names
from tasks.paths import SPLITS

log = logging.getLogger("transferline.token_validate")

REQUIRED_COLUMNS = (SENTENCE, TOKENS, TAGS)
_EPS = suite._RATE_EPSILON
_Check = suite._Check
LENGTH_WORDS = suite.LengthWords(
    "sentence-length", "tokens", "ner.reference_length_tolerance", "reference_sentence_lengths"
)


class TokenValidationReport(suite.ValidationReport):
    """The suite's verdict; the error message's advice is about tagged sentences and the ``ner`` keys."""

    subject = "token-classification"
    prepared = "the prepared sentences"

    def hint(self, outcome: suite.ExpectationOutcome) -> str:
        return token_hint(outcome)


_HINTS = {
    ("sentences", "n_tokens"): "give each listed sentence one tag per token (a missing or extra tag column,"
    " a token holding the delimiter), in the source (data.source)",
    ("sentences", "length"): "fix or remove the listed sentences (an empty one is usually a stray separator"
    " line), or widen ner.min_tokens / ner.max_tokens if they are genuine",
    ("sentences", "opening_inside"): "tag the first token of each entity B-X (an I-X must follow B-X or I-X),"
    " set ner.scheme: IOB1 if the source opens entities with I-, or set ner.repair_iob: true to turn"
    " each opening I-X into B-X (counted in the report)",
    ("sentences", TEXT): "the same sentence must not repeat: set data.drop_duplicates: true",
    ("tags", "tag"): "declare the missing entity types in data.labels, rename source types with"
    " data.label_map, or fix the tags (only O, B-<type> and I-<type> are read)",
    ("entity_counts", "entities"): "add tagged sentences of the rare types, lower ner.min_entities_per_type,"
    " or drop the type from data.labels",
    ("split_overlap", None): "the same sentence must not be in two splits: set data.drop_duplicates: true",
    ("reference_label_shares", "shift"): "the tags are distributed unlike the champion's data: check the"
    " source (another annotation guideline, a filtered export); if genuine, raise"
    " validate.reference_label_tolerance",
    ("reference_sentence_lengths", "change"): "the sentences are much shorter or longer than the champion's:"
    " check the source (another tokeniser, joined documents); if genuine, raise"
    " ner.reference_length_tolerance",
}


def token_hint(outcome: suite.ExpectationOutcome) -> str:
    """What to change so that this expectation passes."""
    hint = _HINTS.get((outcome.table, outcome.column))
    return hint or suite.shared_hint(outcome)


# -- the tables ---------------------------------------------------------------------------------------------


def sentence_table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All splits stacked, one row per sentence: split, where it came from, counts and the positions of
    opening I- tags."""
    rows = []
    for split_name, frame in frames.items():
        tokens = as_lists(frame, TOKENS) if TOKENS in frame else [[] for _ in range(len(frame))]
        tags = as_lists(frame, TAGS) if TAGS in frame else [[] for _ in range(len(frame))]
        origins = frame[SENTENCE] if SENTENCE in frame else pd.Series(range(len(frame))).astype(str)
        repaired = frame[REPAIRED] if REPAIRED in frame else pd.Series([0] * len(frame))
        for origin, toks, tgs, fixed in zip(origins, tokens, tags, repaired, strict=True):
            rows.append(
                {
                    "split": split_name,
                    SENTENCE: str(origin),
                    TEXT: " ".join(toks),
                    "n_tokens": len(toks),
                    "n_tags": len(tgs),
                    "length": len(toks) or None,  # null for empty sentences: the length check skips them
                    "opening_inside": len(opening_inside(tgs)),
                    "first_opening": _first_opening(toks, tgs),
                    REPAIRED: int(fixed),
                    "tags_list": tgs,
                }
            )
    columns = ["split", SENTENCE, TEXT, "n_tokens", "n_tags", "length", "opening_inside", "first_opening"]
    table = pd.DataFrame(rows, columns=[*columns, REPAIRED, "tags_list"])
    return table.astype({"length": "Float64"})


def _first_opening(tokens: list[str], tags: list[str]) -> str:
    positions = opening_inside(tags)
    if not positions:
        return ""
    i = positions[0]
    before = tags[i - 1] if i else "the sentence start"
    word = tokens[i] if i < len(tokens) else "?"
    return f"token {i + 1} {word!r}: {tags[i]} after {before}"


def tag_table(sentences: pd.DataFrame) -> pd.DataFrame:
    """One row per tag: split, sentence, position (1-based) and the tag."""
    rows = [
        (r.split, r.sentence, i + 1, tag)
        for r in sentences.itertuples(index=False)
        for i, tag in enumerate(r.tags_list)
    ]
    return pd.DataFrame(rows, columns=["split", SENTENCE, "position", "tag"], dtype="object")


def entity_counts(train: pd.DataFrame, types: list[str]) -> pd.DataFrame:
    """One row per declared type: its number of entities in the train split (0 included)."""
    counts = dict.fromkeys(types, 0)
    for tags in as_lists(train, TAGS) if TAGS in train else []:
        for entity, _, _ in entities(tags):
            if entity in counts:
                counts[entity] += 1
    return pd.DataFrame({"type": list(counts), "entities": list(counts.values())})


def split_overlap(sentences: pd.DataFrame) -> pd.DataFrame:
    """One row per sentence text found in more than one split: the text, the splits, where each is."""
    rows = []
    for text, group in sentences.groupby(TEXT, sort=True):
        if group["split"].nunique() > 1:
            where = ", ".join(f"{r.sentence} ({r.split})" for r in group.itertuples(index=False))
            rows.append((text, ", ".join(sorted(group["split"].unique())), where))
    return pd.DataFrame(rows, columns=[TEXT, "splits", "where"], dtype="object")


# -- the suite ----------------------------------------------------------------------------------------------


def validate_sentences(
    frames: dict[str, pd.DataFrame],
    types: Sequence[str],
    cfg: ValidateConfig,
    ner: NerConfig,
    docs_dir: Path | None = None,
    reference: pd.DataFrame | None = None,
) -> TokenValidationReport:
    """Run the token suite on the split frames; see the module doc. `types`: the declared entity types
    (``data.labels``). ``reference`` (the champion's training split) adds the reference_* checks; with
    ``docs_dir`` GX Data Docs are written there; nothing else touches disk."""
    missing = [s for s in ("train", "test") if s not in frames]
    if missing:
        raise ValueError(f"the token suite needs the {' and '.join(missing)} split(s); got {sorted(frames)}")
    frames = {s: frames[s] for s in SPLITS if s in frames}
    types = list(types)
    sentences = sentence_table(frames)
    tables: dict[str, pd.DataFrame] = {
        **frames,
        "sentences": sentences.drop(columns="tags_list"),
        "tags": tag_table(sentences),
        "entity_counts": entity_counts(frames["train"], types),
        "split_overlap": split_overlap(sentences),
    }
    checks = [
        suite._column_exists_check(name, frame, c) for name, frame in frames.items() for c in REQUIRED_COLUMNS
    ]
    checks += _sentence_checks(sentences, cfg, ner)
    checks.append(_tag_check(tables["tags"], types))
    checks.append(_entity_count_check(tables["entity_counts"], ner.min_entities_per_type))
    checks.append(_overlap_check(tables["split_overlap"]))
    if reference is not None:
        reference_tables, reference_checks = _reference_checks(sentences, reference, types, cfg, ner)
        tables.update(reference_tables)
        checks += reference_checks
    outcomes, raw = suite.run_checks(tables, checks, docs_dir)
    report = TokenValidationReport(
        success=all(o.success for o in outcomes),
        outcomes=outcomes,
        rows={name: len(frame) for name, frame in frames.items()},
        gx_results=raw,
        reference_rows=None if reference is None else len(reference),
    )
    log.info("token validation %s: %d of %d expectations failed", "passed" if report.success else "FAILED",
             len(report.failures), len(outcomes))  # fmt: skip
    return report


def _rule(
    table_name: str,
    table: pd.DataFrame,
    column: str | None,
    expectation: Any,
    bad: pd.Series,
    ok: str,
    what: str,
    show: Callable[[Any], str],
) -> _Check:
    """A check whose offending rows are `bad`; the detail names them (sentences) with `show`."""
    return suite.row_check(table_name, table, column, expectation, bad, ok, what, show, "sentence")


def _sentence_checks(sentences: pd.DataFrame, cfg: ValidateConfig, ner: NerConfig) -> list[_Check]:
    import great_expectations.expectations as gxe

    n = f"all {len(sentences):,} sentences"
    bounds = f"[{ner.min_tokens}, {ner.max_tokens}] tokens"
    repaired = int(sentences[REPAIRED].sum())
    fixed = sentences[REPAIRED] > 0
    repair_note = (
        f" ({repaired:,} opening I- tags repaired to B- in {int(fixed.sum()):,} sentences: ner.repair_iob)"
        if repaired
        else ""
    )
    length = sentences["length"]
    distinct = sentences[TEXT].nunique()
    rate = (len(sentences) - distinct) / len(sentences) if len(sentences) else 0.0
    repeated = sentences[TEXT].duplicated(keep="first")
    rules = [
        ("n_tokens", gxe.ExpectColumnPairValuesToBeEqual(column_A="n_tokens", column_B="n_tags"),
         sentences["n_tokens"] != sentences["n_tags"], f"{n} have one tag per token",
         "have not as many tags as tokens", lambda r: f"{r.sentence} ({r.n_tokens} tokens, {r.n_tags} tags)"),
        ("n_tokens", gxe.ExpectColumnValuesToBeBetween(column="n_tokens", min_value=1),
         sentences["n_tokens"] < 1, f"{n} have tokens", "are empty", lambda r: str(r.sentence)),
        ("length", gxe.ExpectColumnValuesToBeBetween(column="length", min_value=ner.min_tokens,
                                                     max_value=ner.max_tokens),
         (length < ner.min_tokens) | (length > ner.max_tokens), f"every sentence length is in {bounds}",
         f"have a length outside {bounds}", lambda r: f"{r.sentence} ({r.n_tokens} tokens)"),
        ("opening_inside", gxe.ExpectColumnValuesToBeBetween(column="opening_inside", max_value=0),
         sentences["opening_inside"] > 0, f"every I- tag continues an entity of its type{repair_note}",
         "have an I- tag that opens an entity (after O, another type, or first; IOB2 needs B-)",
         lambda r: f"{r.sentence} ({r.first_opening})"),
        (TEXT, gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column=TEXT, min_value=max(0.0, 1.0 - cfg.max_duplicate_rate - _EPS), max_value=None),
         repeated, f"duplicate rate {rate:.2%} is within validate.max_duplicate_rate"
         f" {cfg.max_duplicate_rate:g}",
         f"repeat an earlier sentence (rate {rate:.2%} > validate.max_duplicate_rate"
         f" {cfg.max_duplicate_rate:g})", lambda r: f"{r.sentence} ({r.split})"),
    ]  # fmt: skip
    return [_rule("sentences", sentences, *rule) for rule in rules]


def _tag_check(tags: pd.DataFrame, types: list[str]) -> _Check:
    import great_expectations.expectations as gxe

    allowed = tag_names(types)
    declared = "{O, B-/I- of " + ", ".join(types) + "}"
    return _rule(
        "tags",
        tags,
        "tag",
        gxe.ExpectColumnValuesToBeInSet(column="tag", value_set=allowed),
        ~tags["tag"].isin(allowed),
        f"all {len(tags):,} tags are in {declared}",
        f"tags outside {declared} (the tag counted, per token)",
        lambda r: f"{r.sentence} (token {r.position}: {r.tag!r})",
    )


def _entity_count_check(counts: pd.DataFrame, minimum: int) -> _Check:
    import great_expectations.expectations as gxe

    def explain(result: dict[str, Any], success: bool) -> tuple[int | None, list[str], str]:
        shown = [f"{r.type}: {r.entities:,}" for r in counts.itertuples(index=False)]
        if success:
            return 0, [], f"every type has at least {minimum:,} train entities ({', '.join(shown)})"
        bad = [f"{r.type}: {r.entities:,}" for r in counts.itertuples(index=False) if r.entities < minimum]
        detail = (
            f"{len(bad)} of {len(counts)} types have fewer than ner.min_entities_per_type = {minimum:,} train"
            f" entities: {', '.join(bad)}"
        )
        return len(bad), bad[: suite.MAX_EXAMPLES], detail

    expectation = gxe.ExpectColumnValuesToBeBetween(column="entities", min_value=minimum)
    return _Check("entity_counts", "entities", expectation, explain)


def _overlap_check(shared: pd.DataFrame) -> _Check:
    return suite.content_overlap_check(
        shared,
        "where",
        "sentence",
        "no sentence appears in more than one split",
        "No sentence (tokens joined by spaces) is in more than one split.",
    )


# -- against the champion's training sentences --------------------------------------------------------------


def _per_token(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per token with its tag as ``label``: the text suite's label-share check then compares tags."""
    return pd.DataFrame({"label": [tag for tags in as_lists(frame, TAGS) for tag in tags]}, dtype="string")


def _reference_checks(
    sentences: pd.DataFrame, reference: pd.DataFrame, types: list[str], cfg: ValidateConfig, ner: NerConfig
) -> tuple[dict[str, pd.DataFrame], list[_Check]]:
    suite.require_reference(reference, (TOKENS, TAGS), "token classification")
    train = sentences[sentences["split"] == "train"]
    shares = suite._label_shares(
        pd.DataFrame({"label": [t for tags in train["tags_list"] for t in tags]}, dtype="string"),
        _per_token(reference),
        tag_names(types),
        cfg.reference_label_tolerance,
    )
    lengths = suite._length_quantiles(
        sentences["n_tokens"].astype(float),
        pd.Series([len(t) for t in as_lists(reference, TOKENS)], dtype=float),
        ner.reference_length_tolerance,
    )
    tables = {"reference_label_shares": shares, "reference_sentence_lengths": lengths}
    checks = [
        suite._label_share_check(shares, cfg.reference_label_tolerance),
        suite.length_quantile_check(lengths, ner.reference_length_tolerance, LENGTH_WORDS),
    ]
    return tables, checks
