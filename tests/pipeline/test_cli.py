"""The `transferline` command: help and listings work (bad parameters: tests/reliability/test_row12_*)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import ROOT, run

CLI = [sys.executable, "-m", "flows.cli"]


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
