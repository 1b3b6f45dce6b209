"""Promotion against a real Prefect run: human approval (approve, reject, timeout), crash recovery."""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run
from tests.pipeline.test_retrain_flow import model_name, registry

pytestmark = pytest.mark.pipeline


def run_in_thread(fn, *args: Any, **kwargs: Any) -> tuple[threading.Thread, dict]:
    """Run fn in a thread that sees the test's Prefect settings (they live in context variables)."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = fn(*args, **kwargs)
        except BaseException as err:  # the test inspects whatever the flow raised
            outcome["error"] = err

    ctx = contextvars.copy_context()
    thread = threading.Thread(target=ctx.run, args=(target,), daemon=True)
    thread.start()
    return thread, outcome


def wait_for_paused_run(known: set, timeout: float = 300) -> Any:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for fr in client.read_flow_runs(limit=50):
                if fr.id not in known and fr.state is not None and fr.state.is_paused():
                    return fr.id
            time.sleep(0.5)
    raise AssertionError("no flow run paused for approval")


def paused_runs_so_far() -> set:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {fr.id for fr in client.read_flow_runs(limit=200)}


@pytest.mark.parametrize("decision", ["approve", "reject", "timeout"])
def test_human_approval(project: Path, prefect_server, decision: str):
    from prefect.flow_runs import resume_flow_run

    from flows.retrain import retrain
    from tasks.promote import ApprovalRejected

    timeout_s = 4 if decision == "timeout" else 120
    overrides = {"promote.require_approval": True, "promote.approval_timeout_s": timeout_s}
    known = paused_runs_so_far()
    thread, outcome = run_in_thread(retrain, project_dir=str(project), overrides=overrides)
    name = model_name(project)
    if decision != "timeout":  # (a 4 s pause may end before a slow poll sees it: don't race it)
        run_id = wait_for_paused_run(known)
        # while paused, the version is registered as challenger and nothing is champion yet
        assert registry(project).get_alias(name, "challenger").version == "1"
        assert registry(project).get_alias(name, "champion") is None
        resume_flow_run(
            run_id,
            run_input={"approve": decision == "approve", "comment": f"{decision} in test", "approver": "qa"},
        )
    thread.join(timeout=300)
    assert not thread.is_alive()
    champion = registry(project).get_alias(name, "champion")
    if decision == "approve":
        assert "error" not in outcome, outcome.get("error")
        assert champion is not None and champion.version == "1"
        entry = [e for e in registry(project).ledger(name) if e.alias == "champion"][-1]
        assert entry.to_version == "1" and entry.approval["approver"] == "qa"
        assert entry.approval["comment"] == "approve in test"
    else:
        assert isinstance(outcome.get("error"), ApprovalRejected), outcome
        expected = "qa: reject in test" if decision == "reject" else f"no decision within {timeout_s} s"
        assert expected in str(outcome["error"])
        assert champion is None
        assert registry(project).get_alias(name, "challenger").version == "1"


def test_run_refuses_approval_without_a_prefect_server(project: Path):
    result = run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "--project",
            str(project),
            "--set",
            "promote.require_approval=true",
        ],
        project,
    )
    assert result.returncode == 2 and "PREFECT_API_URL" in result.stderr


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def test_crash_between_version_and_alias_then_an_idempotent_rerun(project: Path, prefect_server):
    """Kill the process right after MLflow created the version: no alias may point at it; the re-run
    reuses it instead of registering a duplicate, and promotes it after its gate."""
    import os

    from tasks.faults import CRASH_EXIT_CODE

    env = {**os.environ, "PREFECT_API_URL": _api_url()}  # the test's server, not one the crash would orphan
    cli = [sys.executable, "-m", "flows.cli", "run", "--project", str(project)]
    crashed = run(cli, project, env={**env, "TRANSFERLINE_FAULT": "registry.version-created"})
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-2000:]
    reg, name = registry(project), model_name(project)
    versions = reg.list_versions(name)
    assert [v.version for v in versions] == ["1"] and versions[0].aliases == ()
    assert reg.get_alias(name, "champion") is None and reg.get_alias(name, "challenger") is None
    orphan_key = versions[0].tags["run_key"]

    rerun = run(cli, project, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    versions = reg.list_versions(name)
    assert [v.version for v in versions] == ["1"], "the re-run registered a duplicate"
    assert versions[0].tags["run_key"] == orphan_key
    assert reg.get_alias(name, "champion").version == "1"
    moves = [(e.alias, e.from_version, e.to_version) for e in reg.ledger(name)]
    assert ("champion", None, "1") in moves


def test_rollback_returns_champion_to_previous(project: Path, prefect_server):
    from flows.retrain import retrain

    reg, name = registry(project), model_name(project)
    assert retrain(project_dir=str(project)).version == "1"
    # an equally good model passes in non-inferiority mode and becomes champion v2
    assert retrain(project_dir=str(project), overrides={"gate.mode": "non_inferiority"}).version == "2"
    assert reg.get_alias(name, "champion").version == "2" and reg.get_alias(name, "previous").version == "1"

    cli = [
        sys.executable,
        "-m",
        "flows.cli",
        "rollback",
        "--project",
        str(project),
        "--reason",
        "bad reviews",
    ]
    result = run(cli, project)
    assert result.returncode == 0, result.stderr
    assert reg.get_alias(name, "champion").version == "1"  # checked by version id
    assert reg.get_alias(name, "previous").version == "2"
    last = [e for e in reg.ledger(name) if e.alias == "champion"][-1]
    assert (last.from_version, last.to_version, last.reason) == ("2", "1", "bad reviews")

    show = run([sys.executable, "-m", "flows.cli", "registry", "show", "--project", str(project)], project)
    assert show.returncode == 0 and "bad reviews" in show.stdout
    lineage = run([sys.executable, "-m", "flows.cli", "lineage", "2", "--project", str(project)], project)
    assert lineage.returncode == 0, lineage.stderr
    v2 = reg.get_version(name, "2")
    assert v2.tags["data_hash"] in lineage.stdout and "dvc" in lineage.stdout
