"""Row 9: the process dies between MLflow creating a model version and the alias moving to it.

The fault point `registry.version-created` exits the real `transferline run` process abruptly right after
the version exists. No alias may ever point at that unevaluated version; the re-run reuses it (no duplicate
version) and promotes it only after its own gate.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import cli, run
from tests.pipeline.test_retrain_flow import model_name, registry
from tests.reliability.ledger import hashes, lost

pytestmark = pytest.mark.pipeline


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def test_crash_between_version_and_alias_then_an_idempotent_rerun(
    quick_project: Path, prefect_server, ledger
):
    """Kill the process right after MLflow created the version: no alias may point at it; the re-run
    reuses it instead of registering a duplicate, and promotes it after its gate."""
    project = quick_project  # a model only has to exist here
    with ledger.fault(9, "process killed between creating the model version and moving the alias"):
        from tasks.faults import CRASH_EXIT_CODE

        env = {
            **os.environ,
            "PREFECT_API_URL": _api_url(),
        }  # the test's server, not one the crash would orphan
        command = [sys.executable, "-m", "flows.cli", "run", "--project", str(project)]
        crashed = run(command, project, env={**env, "TRANSFERLINE_FAULT": "registry.version-created"})
        remote = hashes([project.parent / "dvc-remote"])
        assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-2000:]
        reg, name = registry(project), model_name(project)
        versions = reg.list_versions(name)
        assert [v.version for v in versions] == ["1"] and versions[0].aliases == ()
        assert reg.get_alias(name, "champion") is None and reg.get_alias(name, "challenger") is None
        orphan_key = versions[0].tags["run_key"]

        assert cli("run", "--project", str(project)) == 0  # the re-run, in this process
        versions = reg.list_versions(name)
        assert [v.version for v in versions] == ["1"], "the re-run registered a duplicate"
        assert versions[0].tags["run_key"] == orphan_key
        assert reg.get_alias(name, "champion").version == "1"
        moves = [(e.alias, e.from_version, e.to_version) for e in reg.ledger(name)]
        assert ("champion", None, "1") in moves
        # the version the crash left behind was promoted only after its gate passed in the re-run
        v1 = reg.get_version(name, "1")
        wrongful = int(v1.tags.get("gate") != "passed")
        assert wrongful == 0, v1.tags
        ledger.figure(
            9, wrongful_promotions=wrongful, data_lost=lost(remote, hashes([project.parent / "dvc-remote"]))
        )
