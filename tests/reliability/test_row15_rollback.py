"""Row 15: rollback returns `champion` to the previous version, checked by version id, and is recorded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import cli, run
from tests.pipeline.test_retrain_flow import model_name, registry
from tests.reliability.ledger import hashes, lost

pytestmark = pytest.mark.pipeline


def test_rollback_returns_champion_to_previous(quick_project: Path, prefect_server, ledger, capsys):
    project = quick_project  # a model only has to exist here
    with ledger.fault(15, "rollback of champion v2 to v1"):
        from flows.retrain import retrain

        reg, name = registry(project), model_name(project)
        assert retrain(project_dir=str(project)).version == "1"
        # an equally good model passes in non-inferiority mode and becomes champion v2
        assert retrain(project_dir=str(project), overrides={"gate.mode": "non_inferiority"}).version == "2"
        assert (
            reg.get_alias(name, "champion").version == "2" and reg.get_alias(name, "previous").version == "1"
        )

        artifacts = hashes([project / "mlartifacts"])  # both versions' files must outlive the rollback
        command = [
            sys.executable,
            "-m",
            "flows.cli",
            "rollback",
            "--project",
            str(project),
            "--reason",
            "bad reviews",
        ]
        result = run(command, project)  # the rollback as a user runs it
        assert result.returncode == 0, result.stderr
        assert reg.get_alias(name, "champion").version == "1"  # checked by version id
        assert reg.get_alias(name, "previous").version == "2"
        last = [e for e in reg.ledger(name) if e.alias == "champion"][-1]
        assert (last.from_version, last.to_version, last.reason) == ("2", "1", "bad reviews")

        capsys.readouterr()
        # What it left, read through the same parser in-process (a process each would only add start-up).
        assert cli("registry", "show", "--project", str(project)) == 0
        assert "bad reviews" in capsys.readouterr().out
        assert cli("lineage", "2", "--project", str(project)) == 0
        lineage = capsys.readouterr().out
        v2 = reg.get_version(name, "2")
        assert v2.tags["data_hash"] in lineage and "dvc" in lineage
        ledger.figure(15, data_lost=lost(artifacts, hashes([project / "mlartifacts"])))
