"""`dvc repro` runs the same stage functions as the flow, and leaves a clean `dvc status`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run, set_params

pytestmark = pytest.mark.pipeline
DVC = [sys.executable, "-m", "dvc"]
# The champion stage asks the registry on every repro (DVC cannot see it): the one stage status lists.
CHAMPION_ALWAYS = {"champion": ["always changed"]}


def comparable(gate: dict) -> dict:
    """A gate report without the measured latencies, which vary from one measurement to the next."""
    checks = [
        {**check, "value": None, "detail": None} if check["name"] == "latency budget" else check
        for check in gate["checks"]
    ]
    budgets = {k: v for k, v in (gate.get("budgets") or {}).items() if "latency" not in k}
    return {**gate, "checks": checks, "budgets": budgets}


def test_dvc_repro_runs_the_flows_stages_and_gates_against_the_registry_champion_as_it_does(
    quick_project: Path, prefect_server
):
    """One project for both sides (each `dvc repro` is eight stage processes): the flow promotes v1, new
    data then goes through `dvc repro` and through the flow, and the two gate alike, score for score."""
    from flows.retrain import retrain
    from tasks.gate import GateRejected
    from tasks.paths import ProjectPaths
    from tasks.stages import STAGES

    project, paths = quick_project, ProjectPaths.at(quick_project)
    first = retrain(project_dir=str(project))
    assert first.version == "1" and first.promoted
    # Another split of the data: every stage but the download runs again; DVC and the flow both read it.
    set_params(project, {"data.seed": 7})

    repro = run([*DVC, "repro"], project)
    assert repro.returncode == 0, repro.stdout + repro.stderr
    for stage in STAGES:
        if stage != "download":
            assert f"Running stage '{stage}'" in repro.stdout
    assert "Stage 'download' didn't change" in repro.stdout  # the flow's dvc.lock holds for DVC too
    status = run([*DVC, "status", "--json"], project)
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == CHAMPION_ALWAYS, status.stdout
    assert json.loads(paths.champion_manifest.read_text())["version"] == "1"
    by_dvc, dvc_scores = (
        json.loads(paths.gate_json.read_text()),
        json.loads(paths.evaluation_file.read_text()),
    )
    assert not by_dvc["first_model"] and by_dvc["champion_version"] == "1"
    assert dvc_scores["retention"] is not None and (paths.drift_dir / "report.json").is_file()
    assert dvc_scores["challenger"]["n"] == 50
    assert by_dvc["challenger_accuracy"] == dvc_scores["challenger"]["accuracy"]
    # Nothing changed, so nothing runs again but the champion stage, which finds the same champion; and
    # the outputs push to the local remote.
    again = run([*DVC, "repro"], project)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("Running stage") == 1 and "Running stage 'champion'" in again.stdout
    push = run([*DVC, "push"], project)
    assert push.returncode == 0, push.stderr

    try:  # the same inputs through the flow: it gates the same way, then acts on the decision
        promoted = retrain(project_dir=str(project)).version == "2"
    except GateRejected:
        promoted = False
    by_flow, flow_scores = (
        json.loads(paths.gate_json.read_text()),
        json.loads(paths.evaluation_file.read_text()),
    )
    assert comparable(by_flow) == comparable(by_dvc)
    for side in ("challenger", "champion", "retention"):  # every score, row by row
        assert flow_scores[side] == dvc_scores[side], side
    assert promoted == by_dvc["passed"]
