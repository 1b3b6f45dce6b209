"""A run's code identity is the stages' code: an edit to a module no stage imports re-runs nothing and the
champion stays "already trained on these inputs"; an edit to a module training imports trains again.

The runs after the first execute the project's own copy of tasks/ (as in a clone of the project), so the
edits made to that copy are the code that runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run

pytestmark = pytest.mark.pipeline


def run_project_code(project: Path):
    """`transferline run` importing tasks/ from the project (flows/ from this checkout)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project), str(ROOT)])}
    return run([sys.executable, "-m", "flows.cli", "run", "--project", str(project)], project, env)


def append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"{line}\n")


def test_only_an_edit_to_stage_code_trains_again(quick_project: Path, prefect_server):
    from flows.retrain import retrain
    from tests.pipeline.test_retrain_flow import model_name, registry

    project = quick_project
    # In-process, this checkout's tasks/: the same files as the project's copy, so the same code identity.
    assert retrain(project_dir=str(project)).version == "1"
    weights = project / "models" / "challenger" / "model.safetensors"
    prepared = project / "data" / "prepared" / "train.parquet"
    validated = project / "reports" / "validation" / "result.json"
    written = {p: p.stat().st_mtime_ns for p in (weights, prepared, validated)}

    append(project / "tasks" / "serve.py", "# an edit to serving, which no stage imports")
    unchanged = run_project_code(project)
    assert unchanged.returncode == 0, unchanged.stdout[-2000:] + unchanged.stderr[-3000:]
    assert "was already 'champion'" in unchanged.stdout
    assert {p: p.stat().st_mtime_ns for p in written} == written  # nothing prepared, validated or trained

    append(project / "tasks" / "transfer.py", "# an edit to code the train stage imports")
    retrained = run_project_code(project)
    assert retrained.returncode == 0, retrained.stdout[-2000:] + retrained.stderr[-3000:]
    assert weights.stat().st_mtime_ns != written[weights]  # trained again
    assert prepared.stat().st_mtime_ns == written[prepared]  # prepare's code did not change: cached
    # The same data, params and seed give the same weights: v1 again, no new version.
    assert "was already 'champion'" in retrained.stdout
    assert [v.version for v in registry(project).list_versions(model_name(project))] == ["1"]
