"""data-watch: start a retraining only when the data source's content changed.

What "changed" is compared with is kept where it survives restarts: the registry. Every version carries
the sha256 of the source it was prepared from (tag ``data_source_sha256``); data the champion or the
latest version was trained on is not new. Runs the watch already started for the same data (tagged
``data-sha256:<hash>`` in Prefect) count too, while they are queued or running or if they ended (data
that failed validation is not retried every interval); a crashed or cancelled one does not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import Config
from tasks.kinds import task_of
from tasks.paths import ProjectPaths
from tasks.registry import CHAMPION, Registry

log = logging.getLogger("transferline.watch")

SOURCE_TAG = "data_source_sha256"  # version tag written by tasks.promote.lineage_tags
RUN_TAG_PREFIX = "data-sha256:"
NOT_ATTEMPTS = ("CRASHED", "CANCELLED", "CANCELLING")  # state types of runs that never judged the data


@dataclass(frozen=True)
class WatchDecision:
    retrain: bool
    reason: str


def run_tag(source_hash: str) -> str:
    return f"{RUN_TAG_PREFIX}{source_hash}"


def decide(current: str, trained: dict[str, str], attempts: list[str]) -> WatchDecision:
    """Retrain only for data that no version was trained on and no earlier run was started for.

    Args:
        current: sha256 of the data source now.
        trained: {"champion v3": source sha256, "latest v4": ...} from the registry.
        attempts: states of runs already started for `current` (crashed and cancelled ones left out).
    """
    for who, sha in trained.items():
        if sha == current:
            return WatchDecision(False, f"unchanged: {who} was trained on this data")
    if attempts:
        return WatchDecision(False, f"a retraining for this data was already started ({', '.join(attempts)})")
    known = ", ".join(f"{who}: {sha[:12]}" for who, sha in trained.items()) or "no version yet"
    return WatchDecision(True, f"new data (sha256 {current[:12]}; {known})")


@task(name="hash-data-source", cache_policy=NO_CACHE)
def source_hash_task(paths: ProjectPaths, cfg: Config) -> str:
    """The identity of ``data.source`` as the project's task reads it: what prepare records, so what the
    versions' SOURCE_TAG holds (an image folder: every file's path and content, not one file's bytes)."""
    return task_of(cfg).source_identity(cfg.data, paths.root)


@task(name="trained-data", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15])
def trained_sources_task(registry: Registry, model_name: str) -> dict[str, str]:
    """Source hashes the champion and the latest version were trained on (versions without the tag,
    registered before it existed, are left out)."""
    versions = registry.list_versions(model_name)
    champion = next((v for v in versions if CHAMPION in v.aliases), None)
    found = {}
    for label, version in ((CHAMPION, champion), ("latest", versions[-1] if versions else None)):
        if version is not None and version.tags.get(SOURCE_TAG):
            found[f"{label} v{version.version}"] = version.tags[SOURCE_TAG]
    return found


@task(name="earlier-triggers", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15])
def attempts_task(deployment: str, source_hash: str) -> list[str]:
    """States of the runs of `deployment` already started for this data, crashed and cancelled left out."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterTags,
    )

    with get_client(sync_client=True) as client:
        target = client.read_deployment_by_name(deployment)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[target.id])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[run_tag(source_hash)])),
        )
    return [str(r.state_name) for r in runs if r.state_type is None or r.state_type.value not in NOT_ATTEMPTS]


@task(name="trigger-retrain", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15])
def trigger_task(deployment: str, project_dir: str, source_hash: str, watch_run: str) -> str:
    """Start a run of the retraining deployment (queued for its worker); returns the flow run's id."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        deployment,
        parameters={"project_dir": project_dir},
        tags=[run_tag(source_hash)],
        timeout=0,  # don't wait: the worker runs it
        idempotency_key=f"{watch_run}:{source_hash}",  # a retried request must not start a second run
    )
    log.info("new data: started %s (flow run %s)", deployment, run.id)
    return str(run.id)
