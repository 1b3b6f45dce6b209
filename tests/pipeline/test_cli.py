"""The `transferline` command: help and listings work (bad parameters: tests/reliability/test_row12_*)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli, run

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


@pytest.mark.pipeline
def test_run_with_set_prints_the_follow_up_that_shows_its_model(
    quick_project: Path, prefect_server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """`--set registry.model_name=...` given to `run` is taken the same way by every command that reads
    the settings, and the run's summary prints the exact command (with the --set it needs) to see it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project, name = quick_project, "reviews-v2"
    given = ["--project", str(project), "--set", f"registry.model_name={name}"]
    assert cli("run", *given, "--set", "gate.min_accuracy=0.0") == 0
    out = capsys.readouterr().out
    indented = [line.split(":", 1) for line in out.splitlines() if line.startswith("  ") and ":" in line]
    summary = {key.strip(): value for key, value in indented}  # "  registry: transferline status ..."
    status_cmd = summary["registry"].split("|")[0].strip()
    assert status_cmd == shlex.join(["transferline", "status", *given])  # only the --set status reads
    lineage_cmd = summary["lineage"].strip()
    assert lineage_cmd == shlex.join(["transferline", "lineage", "1", *given])

    assert cli(*shlex.split(status_cmd)[1:], "--json") == 0  # the printed command, as printed
    status = json.loads(capsys.readouterr().out)
    assert status["model"] == name and status["champion"]["version"] == "1"
    assert cli("status", *given) == 0
    assert f"model {name}" in capsys.readouterr().out

    assert cli("registry", "show", "--json", *given) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["model"], shown["aliases"]["champion"]) == (name, "1")
    assert [(e["alias"], e["to_version"]) for e in shown["ledger"]] == [
        ("challenger", "1"),
        ("champion", "1"),
    ]
    assert cli(*shlex.split(lineage_cmd)[1:], "--json") == 0
    lineage = json.loads(capsys.readouterr().out)
    assert (lineage["model"], lineage["version"]) == (name, "1")
    assert lineage["aliases"] == ["challenger", "champion"]
    assert cli("data", "status", "--json", *given) == 0
    assert json.loads(capsys.readouterr().out)["champion"]["version"] == "1"

    # Without the override the same commands read params.yaml's model, which has no version.
    plain = ["--project", str(project)]
    assert cli("status", "--json", *plain) == 0
    assert json.loads(capsys.readouterr().out)["versions"] == []
    assert cli("lineage", "1", *plain) == 5
    assert "has no version 1" in capsys.readouterr().err


@pytest.mark.pipeline
def test_up_set_becomes_the_overrides_default_of_every_deployment(tmp_path: Path, prefect_server):
    """`transferline up --set ...` registers the deployments with those overrides, so the scheduled
    retraining, the data-watch and batch scoring read the same settings the user gave `up`."""
    from prefect.client.orchestration import get_client

    from flows.cli import _parser
    from flows.deployments import register
    from tasks.config import load_config, parse_overrides
    from tasks.paths import ProjectPaths

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    args = _parser().parse_args(["up", "--project", str(tmp_path), "--set", "registry.model_name=reviews-v2"])
    given = parse_overrides(args.overrides)
    paths = ProjectPaths.at(args.project)
    ops = load_config(paths.params, {**given, "ops.work_pool": "cli-test-pool"}).ops
    names = register(paths, ops, overrides=given)
    with get_client(sync_client=True) as client:
        try:
            deployed = {name: client.read_deployment_by_name(name).parameters for name in names}
        finally:
            for name in names:
                client.delete_deployment(client.read_deployment_by_name(name).id)
            client.delete_work_pool(ops.work_pool)
    assert len(deployed) == 3
    expected = {"project_dir": str(paths.root), "overrides": {"registry.model_name": "reviews-v2"}}
    assert all(parameters == expected for parameters in deployed.values()), deployed
