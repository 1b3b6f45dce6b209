"""The real retraining flow on tiny data: Prefect, MLflow (SQLite), DVC, GX and MiniLM, no mocks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import run, set_params

pytestmark = pytest.mark.pipeline


def model_name(project: Path) -> str:
    return yaml.safe_load((project / "params.yaml").read_text())["registry"]["model_name"]


def registry(project: Path):
    from tasks.paths import ProjectPaths
    from tasks.registry import Registry

    return Registry.for_project(ProjectPaths.at(project))


def write_source(project: Path, frame: pd.DataFrame) -> None:
    path = project / "data" / "raw" / "reviews.csv"
    frame.to_csv(path, index=False)
    set_params(
        project,
        {"data.source": "data/raw/reviews.csv", "data.text_column": "text", "data.label_column": "label",
         "data.max_rows": None},
    )  # fmt: skip


def real_reviews(n: int) -> pd.DataFrame:
    """n real rotten-tomatoes reviews (balanced), as a user's CSV would hold them."""
    from tasks.kinds.text_sources import resolve_source

    path, _ = resolve_source("sample://rotten-tomatoes", Path("."))
    df = pd.read_csv(path)
    df = pd.concat([df[df.category == c].head(n // 2) for c in ("fresh", "rotten")])
    return df.rename(columns={"category": "label"})[["text", "label"]].reset_index(drop=True)


def test_first_run_promotes_then_a_failing_gate_keeps_the_champion(project: Path, prefect_server):
    from flows.retrain import retrain
    from tasks.gate import GateRejected

    name = model_name(project)
    params_before = (project / "params.yaml").read_bytes()

    first = retrain(project_dir=str(project))
    assert first.version == "1" and first.promoted and first.champion_version is None
    reg = registry(project)
    champion = reg.get_alias(name, "champion")
    assert champion is not None and champion.version == "1"
    tags = champion.tags
    assert tags["data_hash"].endswith(".dir") and tags["data_hash"] == first.data_hash
    assert tags["base_model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(tags["base_model_sha256"]) == 64 and tags["gate"] == "passed"
    for key in ("params_hash", "git_commit", "base_model_revision", "weights_hash"):
        assert tags[key], key
    assert champion.metrics["test_accuracy"] == pytest.approx(first.test_accuracy)

    # The flow recorded exactly what `dvc repro` would have: nothing is stale (but the champion stage, which
    # asks the registry on every repro), and the remote has it.
    status = run([sys.executable, "-m", "dvc", "status", "--json"], project)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout or "{}") == {"champion": ["always changed"]}, status.stdout
    remote = project.parent / "dvc-remote"
    assert sum(1 for p in remote.rglob("*") if p.is_file()) >= 5
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert {o["path"]: o["md5"] for o in lock["stages"]["prepare"]["outs"]}[
        "data/prepared"
    ] == first.data_hash

    # Second run: a gate it cannot pass. The version is registered as challenger; champion stays on v1.
    with pytest.raises(
        GateRejected, match=r"Version 2 stays registered as 'challenger'.*'champion' stays on v1"
    ):
        retrain(project_dir=str(project), overrides={"gate.min_improvement": 0.5})
    assert reg.get_alias(name, "champion").version == "1"
    challenger = reg.get_alias(name, "challenger")
    assert challenger.version == "2" and challenger.tags["gate"] == "failed"
    assert challenger.tags["compared_with_champion"] == "1"
    assert "champion_test_accuracy" in challenger.metrics  # champion scored on the same rows
    assert [v.version for v in reg.list_versions(name)] == ["1", "2"]

    # The override was recorded in dvc.lock, never written into params.yaml.
    assert (project / "params.yaml").read_bytes() == params_before
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["data"]["max_rows"] == 400
    gate_report = (project / "reports" / "gate.md").read_text()
    assert "FAILED" in gate_report and "improvement over champion" in gate_report

    # `transferline status --json` tells scripts the same story.
    out = run([sys.executable, "-m", "flows.cli", "status", "--json", "--project", str(project)], project)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["model"] == name and status["champion"]["version"] == "1"
    assert status["challenger"]["version"] == "2"
    assert status["champion"]["metrics"]["test_accuracy"] == pytest.approx(first.test_accuracy)
    assert [v["version"] for v in status["versions"]] == ["1", "2"]

    # Retraining with exactly v1's inputs reproduces v1's weights: no new version, and not a failure.
    again = retrain(project_dir=str(project))
    assert again.version == "1" and again.champion_version == "1"
    assert [v.version for v in reg.list_versions(name)] == ["1", "2"]
    assert reg.get_alias(name, "champion").version == "1"


@pytest.mark.parametrize(
    ("corrupt", "expectation"),
    [
        (
            lambda df: df.assign(label=df["label"].where(df.index % 25 != 0, "frsh")),
            "expect_column_values_to_be_in_set",
        ),
        (
            lambda df: df.assign(text=df["text"].where(df.index % 30 != 0, "")),
            "expect_column_value_lengths_to_be_between",
        ),
    ],
    ids=["unknown-label", "empty-text"],
)
def test_bad_data_stops_the_run_at_validation(project: Path, prefect_server, corrupt, expectation):
    from flows.retrain import retrain
    from tasks.validate import DataValidationError

    write_source(project, corrupt(real_reviews(240)))
    with pytest.raises(DataValidationError) as info:
        retrain(project_dir=str(project), overrides={"validate.data_docs": True})
    message = str(info.value)
    assert expectation in message
    failing = [o for o in info.value.report.failures if o.expectation == expectation]
    assert failing and failing[0].unexpected_count and str(failing[0].unexpected_count) in message
    # stopped before training: no weights, no model version, reports kept for the user
    assert not (project / "models" / "challenger").exists()
    assert registry(project).list_versions(model_name(project)) == []
    assert (project / "reports" / "validation" / "result.json").is_file()
    assert (project / "reports" / "validation" / "data_docs" / "index.html").is_file()
    # the rejected snapshot is versioned all the same: dvc.lock records the prepared data as it is
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert list(lock["stages"]) == ["prepare"]
    status = run([sys.executable, "-m", "dvc", "status", "--json", "prepare"], project)
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout + status.stderr
