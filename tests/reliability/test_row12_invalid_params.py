"""Row 12: invalid parameters (wrong type, negative learning rate, unknown key; on the command line and in
params.yaml) are refused by the real `transferline run` before any work, naming the key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import run, set_params

pytestmark = pytest.mark.bad_input(12)
CLI = [sys.executable, "-m", "flows.cli"]


def nothing_happened(project: Path) -> bool:
    return not any(
        (project / p).exists() for p in ("mlflow.db", "data/prepared", "models", "reports", "dvc.lock")
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "train.learning_rate=-0.001"], "train.learning_rate: Input should be greater than 0"),
        (["--set", "train.epoch=2"], "train.epoch: unknown key (did you mean 'epochs'?)"),
        (["--set", "data.test_size=1.5"], "data.test_size"),
        (["--set", "train.epochs=many"], "train.epochs"),
    ],
    ids=["negative learning rate", "unknown key", "test_size outside (0, 1)", "wrong type"],
)
def test_invalid_overrides_are_refused_before_any_work(bare_project: Path, args, fragment):
    project = bare_project
    result = run([*CLI, "run", "--project", str(project), *args], project)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert nothing_happened(project)


def test_invalid_params_file_is_refused_before_any_work(bare_project: Path):
    project = bare_project
    set_params(project, {"train.learning_rate": -1})
    text = (project / "params.yaml").read_text().replace("  epochs:", "  epochz:")
    (project / "params.yaml").write_text(text)
    result = run([*CLI, "run", "--project", str(project)], project)
    assert result.returncode == 2
    assert "train.learning_rate" in result.stderr and "train.epochz: unknown key" in result.stderr
    assert nothing_happened(project)
