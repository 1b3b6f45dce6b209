"""promote stage: register every challenger in MLflow, and move `champion` only when the gate passed.

Order matters for "nothing lost, nothing wrongly promoted": the version is registered only after its
data and weights are in DVC's remote, it gets the `challenger` alias at once, and `champion` moves to
it only after a passing gate and a compare-and-set check that the champion did not change meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import Config
from tasks.download import BaseModelRef
from tasks.evaluate import Evaluation
from tasks.gate import Decision, GateRejected, rejection_message
from tasks.paths import ProjectPaths
from tasks.registry import Registry, VersionInfo
from tasks.train import METADATA_FILE, TrainResult

log = logging.getLogger("transferline.promote")

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Champion:
    version: str
    model_dir: Path


def flatten(data: dict, prefix: str = "") -> dict[str, str | int | float | bool | None]:
    out: dict[str, str | int | float | bool | None] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str | int | float | bool) or value is None else str(value)
    return out


def lineage_tags(
    cfg: Config, hashes: dict[str, str], base: BaseModelRef, trained: TrainResult, git: str, flow_run: str
) -> dict[str, str]:
    """What a version must carry to be reproduced: data, params, code and base-model identity."""
    import json

    meta = json.loads((trained.model_dir / METADATA_FILE).read_text())
    return {
        "data_hash": hashes.get("data/prepared", ""),  # DVC md5 of the prepared snapshot (dataset version)
        "data_sha256": meta["data_sha256"],
        "weights_hash": hashes.get("models/challenger", ""),
        "params_hash": cfg.digest(),
        "git_commit": git,
        "base_model_id": base.model_id,
        "base_model_revision": base.revision,
        "base_model_sha256": base.sha256,
        "data_source": cfg.data.source,
        "prefect_flow_run_id": flow_run,
    }


@task(name="find-champion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def champion_task(registry: Registry, cfg: Config, paths: ProjectPaths) -> Champion | None:
    """The current champion's weights, downloaded for scoring on this run's test rows (None if none)."""
    info = registry.get_alias(cfg.registry.model_name, CHAMPION)
    if info is None:
        log.info("no champion for %s yet: the first-model rule applies", cfg.registry.model_name)
        return None
    dest = paths.registry_cache / cfg.registry.model_name / f"v{info.version}"
    return Champion(info.version, registry.download_model_dir(cfg.registry.model_name, info.version, dest))


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def register_task(
    registry: Registry,
    cfg: Config,
    paths: ProjectPaths,
    evaluation: Evaluation,
    decision: Decision,
    trained: TrainResult,
    tags: dict[str, str],
) -> VersionInfo:
    """One MLflow run (params, metrics, reports) and a new model version aliased `challenger`."""
    metrics = {**evaluation.challenger.metrics(), **trained.metrics()}
    if evaluation.champion is not None:
        metrics["champion_test_accuracy"] = evaluation.champion.accuracy
    metrics["gate_passed"] = float(decision.passed)
    artifacts = [
        p
        for p in (
            paths.validation_dir,
            paths.evaluation_dir,
            paths.gate_report,
            paths.prepared_manifest,
            trained.model_dir / METADATA_FILE,
        )
        if p.exists()
    ]
    version_tags = {
        **tags,
        "gate": "passed" if decision.passed else "failed",
        "gate_summary": decision.summary()[:490],
        "compared_with_champion": decision.champion_version or "none",
    }
    info = registry.log_and_register(
        model_name=cfg.registry.model_name,
        experiment=cfg.registry.experiment,
        model_dir=trained.model_dir,
        params=flatten(cfg.to_dict()),
        metrics=metrics,
        artifacts=artifacts,
        tags=version_tags,
        run_name=f"retrain-{tags.get('prefect_flow_run_id', '')[:8]}",
    )
    log.info("registered %s version %s as %r", cfg.registry.model_name, info.version, CHALLENGER)
    return info


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(registry: Registry, cfg: Config, version: VersionInfo, decision: Decision) -> str:
    """Move `champion` to the new version, or raise GateRejected saying why and what stays in place."""
    if not decision.passed:
        raise GateRejected(rejection_message(decision, version.version))
    # Compare-and-set against the champion the gate evaluated: a concurrent promotion is refused.
    registry.promote(cfg.registry.model_name, version.version, expected_champion=decision.champion_version)
    log.info("promoted %s version %s to %r", cfg.registry.model_name, version.version, CHAMPION)
    return version.version
