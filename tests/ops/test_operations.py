"""Operations against a real Prefect server: `transferline up` (server, deployments, worker), runs created
through the API and from the UI in a real browser, caching, the data-arrival trigger, `transferline down`.

One server, one worker and one tiny project (trained once, by the first API run) serve the whole module;
its tests run in file order.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect import flow

from tests.conftest import ROOT, cli, make_project, set_params
from tests.pipeline.test_retrain_flow import model_name, real_reviews, registry, write_source

pytestmark = pytest.mark.pipeline

RETRAIN, WATCH = "retrain/transferline", "data-watch/transferline"
OUTPUT = ROOT / "test-output"  # git-ignored: what the browser check saw
CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags this sandbox refuses connections in bulk.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@dataclass(frozen=True)
class Ops:
    project: Path
    url: str  # the API, http://127.0.0.1:PORT/api; the UI is at the same address without /api
    ops: dict


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project = make_project(tmp_path_factory.mktemp("ops"))
    write_source(project, real_reviews(400))  # a CSV the data-watch test can change
    set_params(project, {"ops.port": free_port()})
    settings = yaml.safe_load((project / "params.yaml").read_text())["ops"]
    url = f"http://127.0.0.1:{settings['port']}/api"
    saved = os.environ.get("PREFECT_WORKER_QUERY_SECONDS")
    os.environ["PREFECT_WORKER_QUERY_SECONDS"] = "1"  # the worker (started by `up`) polls every second
    try:
        assert cli("up", "--project", str(project), "--timeout", "180") == 0
    finally:
        if saved is None:
            os.environ.pop("PREFECT_WORKER_QUERY_SECONDS")
        else:
            os.environ["PREFECT_WORKER_QUERY_SECONDS"] = saved
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            # Task runs reach the server as events, through a process-wide worker that keeps the API URL
            # it started with: one started by an earlier test (the session's test harness) would send
            # this module's task runs there. Drain it so the next one starts against this server.
            _restart_event_worker()
            yield Ops(project, url, settings)
    finally:
        # By now test_down has stopped this module's server: events still meant for it cannot be
        # delivered, so the drain only resets the worker and does not wait long for them.
        _restart_event_worker(timeout=5)
        cli("down", "--project", str(project))


def _restart_event_worker(timeout: float = 30) -> None:
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout)


def versions(project: Path) -> list[str]:
    return [v.version for v in registry(project).list_versions(model_name(project))]


def task_states(flow_run_id: UUID) -> dict[str, list[str]]:
    """{task name: [state name of each of its runs]} of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states = defaultdict(list)
    for run in runs:
        states[run.name.rsplit("-", 1)[0]].append(run.state_name)
    return dict(states)


def wait_final(flow_run_id: UUID, timeout: float = 600):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish within {timeout} s")


def test_up_registers_scheduled_deployments_with_a_run_form(ops: Ops):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        retrain = client.read_deployment_by_name(RETRAIN)
        watch = client.read_deployment_by_name(WATCH)
        batch = client.read_deployment_by_name("batch-predict/transferline")
        pool = client.read_work_pool(ops.ops["work_pool"])
    assert pool.type == "process" and retrain.work_pool_name == watch.work_pool_name == pool.name
    (cron,) = [s.schedule for s in retrain.schedules]
    assert (cron.cron, cron.timezone) == (ops.ops["schedule"], ops.ops["timezone"])
    (interval,) = [s.schedule for s in watch.schedules]
    assert interval.interval.total_seconds() == ops.ops["data_watch_interval_s"]
    assert retrain.parameters == watch.parameters == {"project_dir": str(ops.project)}
    assert retrain.global_concurrency_limit is not None and retrain.global_concurrency_limit.limit == 1
    form = retrain.parameter_openapi_schema["properties"]
    assert list(form) == [
        "project_dir", "overrides", "data_source", "base_model", "strategy", "time_budget_s", "epochs",
        "gate_mode",
    ]  # fmt: skip
    assert all(field.get("description") for field in form.values())
    choices = {name: form[name]["anyOf"][0] for name in ("strategy", "epochs", "gate_mode")}
    assert choices["strategy"]["enum"] == ["head", "freeze", "full", "gradual", "lora", "auto"]
    assert choices["gate_mode"]["enum"] == ["superiority", "non_inferiority"]
    assert (choices["epochs"]["type"], choices["epochs"]["minimum"]) == ("integer", 1)
    assert retrain.enforce_parameter_schema  # the server refuses e.g. epochs=0 or strategy="bogus"
    # batch scoring runs on demand only, and asks for the file to score
    assert batch.parameters == {"project_dir": str(ops.project)} and not batch.schedules
    assert batch.parameter_openapi_schema["required"] == ["input_path"]


def test_api_run_with_custom_parameters_completes_on_the_worker(ops: Ops):
    from prefect.deployments import run_deployment

    parameters = {"epochs": 1, "data_source": "data/raw/reviews.csv"}  # params.yaml says 3 epochs
    run = run_deployment(RETRAIN, parameters=parameters, timeout=900, poll_interval=2)
    assert run.state is not None and run.state.is_completed(), run.state
    assert versions(ops.project) == ["1"]
    champion = registry(ops.project).get_alias(model_name(ops.project), "champion")
    assert champion.tags["prefect_flow_run_id"] == str(run.id)
    logged = registry(ops.project).client().get_run(champion.run_id).data.params
    assert (logged["train.epochs"], logged["data.source"]) == ("1", "data/raw/reviews.csv")
    lock = yaml.safe_load((ops.project / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 1
    assert yaml.safe_load((ops.project / "params.yaml").read_text())["train"]["epochs"] == 3  # untouched


def test_unchanged_rerun_trains_nothing_and_registers_nothing(ops: Ops):
    from flows.retrain import retrain

    weights = ops.project / "models" / "challenger" / "model.safetensors"
    written, lock = weights.stat().st_mtime_ns, (ops.project / "dvc.lock").read_bytes()
    state = retrain(project_dir=str(ops.project), epochs=1, return_state=True)
    summary = state.result()
    assert summary.version == summary.champion_version == "1"
    steps = task_states(state.state_details.flow_run_id)
    assert steps["prepare"] == ["Cached"]  # from the worker's run
    assert (ops.project / "dvc.lock").read_bytes() == lock  # it already recorded this data
    assert not {"validate", "drift", "fine-tune", "evaluate", "register"} & set(steps)
    assert versions(ops.project) == ["1"] and weights.stat().st_mtime_ns == written


@flow
def train_step(project_dir: str, epochs: int):
    """The retrain flow's fine-tune step alone, bound to the project's results as the flow binds it."""
    from tasks.caching import in_project
    from tasks.config import load_config
    from tasks.download import load_base_ref
    from tasks.paths import ProjectPaths
    from tasks.train import train_task

    paths = ProjectPaths.at(project_dir)
    (train,) = in_project(paths, train_task)
    return train(paths, load_config(paths.params, {"train.epochs": epochs}), load_base_ref(paths))


def test_train_step_is_cached_until_its_output_is_deleted(ops: Ops):
    weights = ops.project / "models" / "challenger" / "model.safetensors"
    written = weights.stat().st_mtime_ns

    def fine_tune_state() -> str:
        state = train_step(str(ops.project), 1, return_state=True)
        assert state.result().model_dir == weights.parent
        return task_states(state.state_details.flow_run_id)["fine-tune"][0]

    assert fine_tune_state() == "Cached" and weights.stat().st_mtime_ns == written  # the worker's result
    weights.unlink()
    assert fine_tune_state() == "Completed" and weights.is_file()  # a hit would have no weights: re-run
    assert fine_tune_state() == "Cached"


def test_data_watch_starts_a_retraining_only_for_new_data(ops: Ops):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    from flows.data_watch import data_watch
    from tasks.watch import run_tag

    unchanged = data_watch(project_dir=str(ops.project))
    assert not unchanged.retrain and unchanged.flow_run_id is None
    assert "champion v1 was trained on this data" in unchanged.reason

    source = ops.project / "data" / "raw" / "reviews.csv"
    original = source.read_bytes()
    pool = ops.ops["work_pool"]
    with get_client(sync_client=True) as client:
        # The started run must wait in the queue: this test checks the trigger, not another training.
        client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
        try:
            real_reviews(480).to_csv(source, index=False)  # new reviews arrive
            fresh = data_watch(project_dir=str(ops.project))
            assert fresh.retrain and fresh.flow_run_id and fresh.source_sha256 != unchanged.source_sha256
            started = client.read_flow_run(UUID(fresh.flow_run_id))
            assert started.deployment_id == client.read_deployment_by_name(RETRAIN).id
            assert run_tag(fresh.source_sha256) in started.tags and started.state.is_scheduled()
            assert started.parameters == {"project_dir": str(ops.project)}
            again = data_watch(project_dir=str(ops.project))  # the next interval: already on its way
            assert not again.retrain and "already started (Scheduled)" in again.reason
            client.delete_flow_run(started.id)
        finally:
            source.write_bytes(original)
            client.update_work_pool(pool, WorkPoolUpdate(is_paused=False))
    assert versions(ops.project) == ["1"]


def retrain_runs() -> set[UUID]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(RETRAIN)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
    return {run.id for run in runs}


def wait_new_run(known: set[UUID], timeout: float = 60) -> UUID:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = retrain_runs() - known
        if new:
            (run_id,) = new
            return run_id
        time.sleep(0.5)
    raise AssertionError("submitting the UI's run form created no flow run")


def wait_submitted_run(page: Any, submit: Any, known: set[UUID], ops: Ops) -> UUID:
    """The flow run the form created. Prefect's own server on SQLite can fail a request while other writers
    hold the database (PrefectHQ/prefect#16102: the UI then shows "Oops. Something went wrong." and
    creates nothing); a user submits again, and so does this test, once. Otherwise the screenshot and the
    server's log are kept in test-output/ for the failure."""
    error = page.get_by_text("Something went wrong")
    try:
        return wait_new_run(known, timeout=60)
    except AssertionError:
        if not error.first.is_visible():
            return _kept_for_failure(page, ops, lambda: wait_new_run(known, timeout=60))
    print("the UI reported a failed request; submitting the form again")
    submit.click()
    return _kept_for_failure(page, ops, lambda: wait_new_run(known, timeout=120))


def _kept_for_failure(page: Any, ops: Ops, wait: Callable[[], UUID]) -> UUID:
    try:
        return wait()
    except AssertionError:
        page.screenshot(path=str(OUTPUT / "prefect-ui-after-submit.png"), full_page=True)
        from tasks.paths import ProjectPaths

        for log in ProjectPaths.at(ops.project).prefect_home.glob("*.log"):
            shutil.copy2(log, OUTPUT / f"prefect-ui-{log.name}")
        raise


def test_ui_custom_run_from_a_real_browser(ops: Ops, capsys: pytest.CaptureFixture):
    from playwright.sync_api import sync_playwright

    ui = ops.url.removesuffix("/api")
    OUTPUT.mkdir(exist_ok=True)
    form_shot, run_shot = OUTPUT / "prefect-ui-custom-run-form.png", OUTPUT / "prefect-ui-custom-run.png"
    known = retrain_runs()
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000}
        )
        try:
            page = browser.new_page()
            page.goto(f"{ui}/deployments")
            row = page.get_by_role("row").filter(has_text="retrain")  # every flow has a "transferline"
            row.get_by_role("link", name="transferline").click()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run").click()
            epochs = page.locator(".p-label", has_text="epochs")  # the form's field for `epochs`
            epochs.get_by_role("button", name="int", exact=True).click()
            epochs.locator("input").fill("1")
            epochs.locator("input").press("Tab")  # commit the field before submitting the form
            page.screenshot(path=str(form_shot), full_page=True)
            submit = page.get_by_role("button", name="Submit")
            submit.wait_for(state="visible")
            submit.click()
            run_id = wait_submitted_run(page, submit, known, ops)
            run = wait_final(run_id)
            page.goto(f"{ui}/runs/flow-run/{run_id}")
            page.get_by_text("Completed").first.wait_for(timeout=60_000)
            page.screenshot(path=str(run_shot), full_page=True)
        finally:
            browser.close()
    with capsys.disabled():
        print(f"\nscreenshots of the UI-started run: {form_shot} {run_shot}")
    assert run.state.is_completed(), run.state
    assert run.parameters.get("epochs") == 1, run.parameters
    # The form's epochs reached the flow: with them the inputs are exactly v1's, so nothing was trained.
    assert versions(ops.project) == ["1"] and "fine-tune" not in task_states(run_id)


def test_down_stops_the_server_and_the_worker(ops: Ops):
    from flows.ops_commands import healthy

    # This process's event stream to the server is a client like any other: closed first, as a user's
    # clients would be, or the server waits for it until `down` kills it (30 s later).
    _restart_event_worker(timeout=5)
    assert cli("down", "--project", str(ops.project)) == 0
    assert not healthy(ops.url)
    assert not list((ops.project / ".prefect").glob("*.pid"))
