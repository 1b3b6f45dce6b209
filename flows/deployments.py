"""The project's Prefect deployments, in one table; `transferline up` registers them (flows/ops_commands.py).

Each deployment runs a flow of this code base from source (the folder that holds flows/, so the worker
imports exactly this code) on the project's work pool, of type `process`, with `project_dir` set to the
project. Adding a deployment is one line in DEPLOYMENTS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.config import OpsConfig
from tasks.paths import ProjectPaths

if TYPE_CHECKING:
    from prefect.schedules import Schedule

CODE_ROOT = Path(__file__).resolve().parent.parent  # holds flows/ and tasks/
DEPLOYMENT_NAME = "transferline"  # every flow's deployment has this name: "retrain/transferline", ...
RETRAIN_DEPLOYMENT = f"retrain/{DEPLOYMENT_NAME}"
WORK_POOL_TYPE = "process"  # runs each flow run as a subprocess of the worker, on this machine


def scheduled_retraining(ops: OpsConfig) -> Schedule:
    from prefect.schedules import Cron

    return Cron(ops.schedule, timezone=ops.timezone)


def data_watch_interval(ops: OpsConfig) -> Schedule:
    from prefect.schedules import Interval

    return Interval(timedelta(seconds=ops.data_watch_interval_s))


@dataclass(frozen=True)
class Deployment:
    entrypoint: str  # file.py:flow_function, relative to CODE_ROOT
    schedule: Callable[[OpsConfig], Schedule] | None = None  # None: runs start from the UI, API or CLI only
    concurrency_limit: int | None = None  # runs of one deployment at a time (later ones wait)


DEPLOYMENTS: tuple[Deployment, ...] = (
    # One retraining at a time: runs of a project share its workspace (data/prepared, models/challenger).
    Deployment("flows/retrain.py:retrain", schedule=scheduled_retraining, concurrency_limit=1),
    Deployment("flows/data_watch.py:data_watch", schedule=data_watch_interval, concurrency_limit=1),
    # On demand, with the file to score: `prefect deployment run batch-predict/transferline -p input_path=...`
    Deployment("flows/batch_predict.py:batch_predict"),
)


class DeploymentError(RuntimeError):
    """The work pool or a deployment could not be registered; the message says why."""


def register(
    paths: ProjectPaths,
    ops: OpsConfig,
    code_root: Path = CODE_ROOT,
    overrides: dict[str, Any] | None = None,
) -> list[str]:
    """Create the work pool (if missing) and create or update every deployment of DEPLOYMENTS on the
    Prefect API in use (PREFECT_API_URL); returns their full names, e.g. "retrain/transferline".
    `overrides` (``transferline up --set``) become the default of each flow's `overrides` parameter."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(ops.work_pool)
        except ObjectNotFound:
            pool = client.create_work_pool(WorkPoolCreate(name=ops.work_pool, type=WORK_POOL_TYPE))
    if pool.type != WORK_POOL_TYPE:
        raise DeploymentError(
            f"work pool {ops.work_pool!r} exists with type {pool.type!r}, not {WORK_POOL_TYPE!r}: set "
            "ops.work_pool in params.yaml to another name"
        )
    names = []
    for spec in DEPLOYMENTS:
        loaded = flow.from_source(source=str(code_root), entrypoint=spec.entrypoint)
        takes = loaded.parameters.properties
        parameters: dict[str, Any] = {"project_dir": str(paths.root)} if "project_dir" in takes else {}
        if overrides and "overrides" in takes:
            parameters["overrides"] = overrides
        loaded.deploy(
            name=DEPLOYMENT_NAME,
            work_pool_name=ops.work_pool,
            schedules=[spec.schedule(ops)] if spec.schedule else [],
            parameters=parameters,
            concurrency_limit=spec.concurrency_limit,
            tags=[DEPLOYMENT_NAME],
            build=False,
            push=False,
            print_next_steps=False,
        )
        names.append(f"{loaded.name}/{DEPLOYMENT_NAME}")
    return names
