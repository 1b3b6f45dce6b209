"""The data-arrival trigger: hash the data source and start a retraining only when its content changed.

Deployed as `data-watch/transferline` on an interval (ops.data_watch_interval_s). Unchanged data starts
nothing, so no model version is created; see tasks/watch.py for what counts as unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger, runtime

from flows.deployments import RETRAIN_DEPLOYMENT
from tasks.config import load_config
from tasks.paths import ProjectPaths
from tasks.registry import Registry
from tasks.watch import attempts_task, decide, source_hash_task, trained_sources_task, trigger_task


@dataclass(frozen=True)
class WatchResult:
    source_sha256: str
    retrain: bool
    reason: str
    flow_run_id: str | None  # the retraining run it started


@flow(name="data-watch", description=__doc__)
def data_watch(
    project_dir: str = ".",
    retrain_deployment: str = RETRAIN_DEPLOYMENT,
    overrides: dict[str, Any] | None = None,
) -> WatchResult:
    """Start `retrain_deployment` for the project when its data source holds new data.

    Args:
        project_dir: folder holding params.yaml (data.source is read from it).
        retrain_deployment: the retraining deployment to start, as flow-name/deployment-name.
        overrides: params.yaml keys to change, dotted, as the retraining deployment is given them.
    """
    paths = ProjectPaths.at(project_dir)
    cfg = load_config(paths.params, overrides)
    current = source_hash_task(paths, cfg)
    trained = trained_sources_task(Registry.for_project(paths), cfg.registry.model_name)
    decision = decide(current, trained, attempts_task(retrain_deployment, current))
    get_run_logger().info("%s: %s", cfg.data.source, decision.reason)
    started = None
    if decision.retrain:
        started = trigger_task(retrain_deployment, str(paths.root), current, str(runtime.flow_run.id))
    return WatchResult(current, decision.retrain, decision.reason, started)
