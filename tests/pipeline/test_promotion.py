"""Promotion against a real Prefect run: human approval (approve, reject, timeout), crash recovery."""

from __future__ import annotations

import contextvars
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run
from tests.pipeline.test_retrain_flow import model_name, registry

pytestmark = pytest.mark.pipeline
PAUSE_TIMEOUT_S = 4  # the run left to time out waits this long
# The answered runs wait up to this long; a paused run polls for its answer every tenth of its timeout,
# so a shorter one is answered sooner (the wait before the answer is a fraction of it).
ANSWERED_TIMEOUT_S = 40


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


def approval_round(project: Path, decision: str, version: str) -> dict:
    """One retraining that pauses for approval, answered `decision` (or left to time out); `version` is
    the one it registers. Returns what the flow returned or raised."""
    from prefect.flow_runs import resume_flow_run

    from flows.retrain import retrain

    timeout_s = PAUSE_TIMEOUT_S if decision == "timeout" else ANSWERED_TIMEOUT_S
    overrides = {"promote.require_approval": True, "promote.approval_timeout_s": timeout_s}
    known = paused_runs_so_far()
    thread, outcome = run_in_thread(retrain, project_dir=str(project), overrides=overrides)
    name = model_name(project)
    if decision != "timeout":  # (a 4 s pause may end before a slow poll sees it: don't race it)
        run_id = wait_for_paused_run(known)
        # while paused, the version is registered as challenger and is not champion
        assert registry(project).get_alias(name, "challenger").version == version
        assert registry(project).get_alias(name, "champion") is None
        resume_flow_run(
            run_id,
            run_input={"approve": decision == "approve", "comment": f"{decision} in test", "approver": "qa"},
        )
    thread.join(timeout=300)
    assert not thread.is_alive()
    return outcome


def test_human_approval_rejected_timed_out_then_approved(quick_project: Path, prefect_server):
    """Three runs of one project on the same inputs (a model only has to exist here): a rejection and a
    timeout each leave v1 as challenger with no champion, and the next run asks again about the same v1
    instead of registering a copy; an approval promotes it and is in the ledger."""
    from tasks.promote import ApprovalRejected

    project, name = quick_project, model_name(quick_project)
    for decision in ("reject", "timeout"):
        outcome = approval_round(project, decision, "1")
        assert isinstance(outcome.get("error"), ApprovalRejected), outcome
        expected = "qa: reject in test" if decision == "reject" else f"no decision within {PAUSE_TIMEOUT_S} s"
        assert expected in str(outcome["error"])
        assert registry(project).get_alias(name, "champion") is None
        assert registry(project).get_alias(name, "challenger").version == "1"

    outcome = approval_round(project, "approve", "1")
    assert "error" not in outcome, outcome.get("error")
    champion = registry(project).get_alias(name, "champion")
    assert champion is not None and champion.version == "1"
    entry = [e for e in registry(project).ledger(name) if e.alias == "champion"][-1]
    assert entry.to_version == "1" and entry.approval["approver"] == "qa"
    assert entry.approval["comment"] == "approve in test"


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
        {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},  # as on a machine without a server
    )
    assert result.returncode == 2 and "PREFECT_API_URL" in result.stderr
