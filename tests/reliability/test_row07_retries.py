"""Row 7: a task raises twice, then succeeds: Prefect retries it, and nothing upstream runs again.

`TRANSFERLINE_FAULT_TRANSIENT=dvc.push:2` makes the real push task fail twice (as a dropped connection to
the remote would) inside a real retraining run; the run's task runs are then read back from Prefect.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import pytest

from tests.pipeline.test_retrain_flow import model_name, registry

pytestmark = pytest.mark.pipeline


def test_a_task_failing_twice_is_retried_and_upstream_is_not_recomputed(
    quick_project: Path, prefect_server, ledger, monkeypatch: pytest.MonkeyPatch
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.retrain import retrain
    from tasks import faults

    project = quick_project
    faults.reset()
    monkeypatch.setenv(faults.TRANSIENT_ENV, "dvc.push:2")
    with ledger.fault(7, "the dvc-push task raises twice, then succeeds"):
        summary = retrain(project_dir=str(project))
        assert summary.promoted and summary.version == "1"
        version = registry(project).get_version(model_name(project), "1")
        flow_run = UUID(version.tags["prefect_flow_run_id"])
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run])))
        by_task: dict[str, list] = {}
        for r in runs:
            by_task.setdefault(r.name.rsplit("-", 1)[0], []).append(r)  # "fine-tune-a1b" -> "fine-tune"
        push = by_task["dvc-push"]
        assert len(push) == 1 and push[0].run_count == 3 and push[0].state.is_completed(), push
        for upstream in ("prepare", "fine-tune", "evaluate"):
            assert [r.run_count for r in by_task[upstream]] == [1], (upstream, by_task.keys())
