"""The token-classification suite against real Great Expectations: clean sentences pass; each broken rule
is refused with the sentence named, through the prepare and validate stages' own functions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.kinds import task_of
from tasks.kinds.token_sources import TAGS, TEXT, TOKENS
from tasks.paths import ProjectPaths
from tasks.prepare import run_prepare
from tasks.validate import DataValidationError, run_validate
from tests.data.sentences import corpus, line_span, ner_config, write_conll


def prepare_and_validate(root: Path, rows: list, overrides: dict | None = None, reference=None):
    """Write `rows` as a CoNLL file in a project folder, prepare it and validate it (the stages' cores)."""
    write_conll(root / "ner.txt", rows)
    cfg = ner_config({"data.source": "ner.txt", "validate.data_docs": False, **(overrides or {})})
    paths = ProjectPaths.at(root)
    run_prepare(paths, cfg.data, task_of(cfg))
    return run_validate(paths, cfg, reference), paths


def failed(err: DataValidationError) -> dict[tuple[str, str | None], str]:
    return {(o.table, o.column): o.detail for o in err.report.failures}


def test_clean_sentences_pass_and_the_report_says_so(tmp_path):
    report, paths = prepare_and_validate(tmp_path, corpus(60))
    assert report.success and report.rows == {"train": 45, "validation": 6, "test": 9}
    details = {(o.table, o.column): o.detail for o in report.outcomes}
    assert "person: 4" in details[("entity_counts", "entities")]
    assert (paths.validation_dir / "summary.md").read_text().startswith("# Data validation: PASSED")


def test_a_misaligned_sentence_and_an_opening_inside_tag_are_refused_and_named(tmp_path):
    rows = corpus(60)
    rows[7] = (["Ada", "Lovelace", "wrote"], ["B-person", "I-person", "O", "O"])  # one tag too many
    rows[11] = (["we", "met", "Alan", "Turing"], ["O", "O", "O", "I-person"])  # I- after O
    with pytest.raises(DataValidationError) as caught:
        prepare_and_validate(tmp_path, rows)
    details = failed(caught.value)
    assert f"ner.txt:{line_span(rows, 7)} (3 tokens, 4 tags)" in details[("sentences", "n_tokens")]
    assert (
        f"ner.txt:{line_span(rows, 11)} (token 4 'Turing': I-person after O)"
        in details[("sentences", "opening_inside")]
    )
    message = str(caught.value)
    assert "one tag per token" in message and "ner.repair_iob: true" in message
    assert not (tmp_path / "models").exists()  # the stages stopped at validation: nothing trained


def test_repair_iob_turns_opening_inside_tags_into_b_and_counts_them(tmp_path):
    rows = corpus(60)
    rows[11] = (["we", "met", "Alan", "Turing"], ["O", "O", "I-person", "I-person"])
    report, paths = prepare_and_validate(tmp_path, rows, {"ner.repair_iob": True})
    assert report.success
    detail = next(o.detail for o in report.outcomes if o.column == "opening_inside")
    assert "1 opening I- tags repaired to B- in 1 sentences: ner.repair_iob" in detail
    prepared = pd.concat(pd.read_parquet(paths.split_file(s)) for s in ("train", "validation", "test"))
    fixed = prepared[prepared[TEXT] == "we met Alan Turing"]
    assert list(fixed[TAGS].iloc[0]) == ["O", "O", "B-person", "I-person"]


def test_unknown_tags_empty_and_long_sentences_rare_types_and_shared_sentences_are_refused(tmp_path):
    rows = corpus(60)
    rows[3] = (["Acme", "ships"], ["B-company", "O"])  # company is not declared
    rows[4] = ([f"w{i}" for i in range(30)], ["O"] * 30)
    with pytest.raises(DataValidationError) as caught:
        prepare_and_validate(tmp_path, rows, {"ner.max_tokens": 20, "ner.min_entities_per_type": 100})
    details = failed(caught.value)
    assert "token 1: 'B-company'" in details[("tags", "tag")]
    assert "(30 tokens)" in details[("sentences", "length")]
    assert "person: " in details[("entity_counts", "entities")]
    assert "ner.min_entities_per_type = 100" in details[("entity_counts", "entities")]

    cfg = ner_config()
    frames = {
        s: pd.read_parquet(ProjectPaths.at(tmp_path).split_file(s)) for s in ("train", "validation", "test")
    }
    frames["test"] = pd.concat([frames["test"], frames["train"].head(1)], ignore_index=True)
    frames["test"].loc[0, TOKENS] = []  # an empty sentence
    frames["test"].loc[0, TAGS] = []
    report = task_of(cfg).validate(frames, tmp_path, list(cfg.data.labels), cfg.validate_)
    by_table = {(o.table, o.column): o for o in report.failures}
    assert by_table[("split_overlap", None)].unexpected_count == 1
    assert "are empty" in by_table[("sentences", "n_tokens")].detail


def test_against_the_champions_sentences(tmp_path):
    reference = pd.DataFrame(
        {TOKENS: [t for t, _ in corpus(40, seed=1)], TAGS: [g for _, g in corpus(40, seed=1)]}
    )
    report, _ = prepare_and_validate(tmp_path, corpus(60), reference=reference)
    assert report.success and report.reference_rows == 40
    long = pd.DataFrame({TOKENS: [["w"] * 40] * 40, TAGS: [["O"] * 40] * 40})  # long, entity-free sentences
    with pytest.raises(DataValidationError) as caught:
        prepare_and_validate(tmp_path, corpus(60), reference=long)
    details = failed(caught.value)
    assert "ner.reference_length_tolerance" in details[("reference_sentence_lengths", "change")]
    assert "O: " in details[("reference_label_shares", "shift")]
