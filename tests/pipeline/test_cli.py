"""The `transferline` command: bad parameters are refused before any work; help and listings work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run, set_params

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
)
def test_invalid_overrides_are_refused_before_any_work(project: Path, args, fragment):
    result = run([*CLI, "run", "--project", str(project), *args], project)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert nothing_happened(project)


def test_invalid_params_file_is_refused_before_any_work(project: Path):
    set_params(project, {"train.learning_rate": -1})
    text = (project / "params.yaml").read_text().replace("  epochs:", "  epochz:")
    (project / "params.yaml").write_text(text)
    result = run([*CLI, "run", "--project", str(project)], project)
    assert result.returncode == 2
    assert "train.learning_rate" in result.stderr and "train.epochz: unknown key" in result.stderr
    assert nothing_happened(project)


def test_help_explains_commands_and_exit_codes(project: Path):
    top = run([*CLI, "--help"], project)
    assert top.returncode == 0 and all(c in top.stdout for c in ("run", "status", "params"))
    run_help = run([*CLI, "run", "--help"], project)
    assert run_help.returncode == 0
    assert "--set KEY=VALUE" in run_help.stdout and "exit codes" in run_help.stdout


def test_params_lists_every_key_with_its_meaning(project: Path):
    result = run([*CLI, "params", "--project", str(ROOT)], project)  # the shipped, commented params.yaml
    assert result.returncode == 0
    assert "train.learning_rate" in result.stdout and "peak AdamW learning rate" in result.stdout


def test_status_on_an_empty_registry(project: Path):
    result = run([*CLI, "status", "--json", "--project", str(project)], project)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["champion"] is None and status["challenger"] is None and status["versions"] == []
