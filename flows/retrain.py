"""The retraining flow: validate -> download -> drift -> fine-tune -> evaluate -> gate -> promote.

It only composes the stage tasks of tasks/ (the same functions dvc.yaml runs) and records the result:
DVC for data and weights, MLflow for the run and the model version. Runs in Prefect's ephemeral mode by
default, or against a server when PREFECT_API_URL is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow, runtime
from prefect.artifacts import create_markdown_artifact

from tasks.config import load_config
from tasks.download import download_task
from tasks.drift import drift_task
from tasks.evaluate import evaluate_task
from tasks.gate import gate_task
from tasks.paths import ProjectPaths
from tasks.prepare import prepare_task
from tasks.promote import (
    champion_task,
    lineage_tags,
    model_card_task,
    promote_task,
    register_task,
    request_approval,
)
from tasks.registry import Registry
from tasks.train import train_task
from tasks.validate import validate_task
from tasks.versioning import PIPELINE_STAGES, commit_task, git_commit, push_task


@dataclass(frozen=True)
class RunSummary:
    model_name: str
    version: str
    promoted: bool
    test_accuracy: float
    champion_version: str | None  # the champion the challenger was compared with
    data_hash: str
    report: str


@flow(name="retrain", description=__doc__)
def retrain(project_dir: str = ".", overrides: dict[str, Any] | None = None) -> RunSummary:
    """One retraining run of the project in `project_dir`.

    Args:
        project_dir: folder holding params.yaml and dvc.yaml.
        overrides: dotted params.yaml keys to change for this run, e.g. {"train.epochs": 1}.
    """
    paths = ProjectPaths.at(project_dir)
    cfg = load_config(paths.params, overrides)
    registry = Registry.for_project(paths)

    prepare_task(paths, cfg.data)
    commit_task(paths, cfg, ("prepare",))  # the snapshot is versioned even if validation rejects it
    champion = champion_task(registry, cfg, paths)
    reference = champion.reference() if champion else None  # new data must resemble the champion's
    validation = validate_task(paths, cfg, reference)
    base = download_task(paths, cfg.model)
    drift_task(paths, cfg, reference, base.path)  # raises DriftBlocked when a `block` check drifted
    trained = train_task(paths, cfg, base)
    evaluation = evaluate_task(
        paths,
        cfg,
        champion.model_dir if champion else None,
        champion.version if champion else None,
        champion.retention_file if champion else None,
    )
    decision = gate_task(paths, evaluation, cfg.gate)
    hashes = commit_task(paths, cfg, PIPELINE_STAGES)
    push_task(paths)  # data and weights reach the remote before any version points at them
    flow_run_id = str(runtime.flow_run.id or "")
    tags = lineage_tags(cfg, hashes, base, trained, git_commit(paths.root), flow_run_id or "local")
    version = register_task(registry, cfg, paths, evaluation, decision, trained, tags)
    model_card_task(registry, cfg, version, tags, evaluation, decision, validation, trained)
    report = _summary_markdown(cfg.registry.model_name, version.version, decision.passed, evaluation, tags)
    create_markdown_artifact(markdown=report, key="retrain-summary", description="Retraining run summary")
    approval = None
    if decision.passed and cfg.promote.require_approval:
        approval = request_approval(cfg, version, decision)  # pauses this flow run
    promote_task(registry, cfg, version, decision, flow_run_id, approval)  # raises when not promoted
    return RunSummary(
        model_name=cfg.registry.model_name,
        version=version.version,
        promoted=True,
        test_accuracy=evaluation.challenger.accuracy,
        champion_version=evaluation.champion_version,
        data_hash=tags["data_hash"],
        report=report,
    )


def _summary_markdown(name: str, version: str, passed: bool, evaluation: Any, tags: dict[str, str]) -> str:
    ch = evaluation.challenger
    champion = (
        f"{evaluation.champion.accuracy:.4f} (v{evaluation.champion_version})" if evaluation.champion else "—"
    )
    rows = "\n".join(f"| {k} | `{v}` |" for k, v in tags.items())
    outcome = "promoted to `champion`" if passed else "kept as `challenger` (gate failed)"
    return (
        f"# {name} v{version}: {outcome}\n\n"
        f"| metric | challenger | champion |\n|---|---|---|\n"
        f"| test accuracy | {ch.accuracy:.4f} | {champion} |\n| macro-F1 | {ch.macro_f1:.4f} | |\n\n"
        f"## Lineage\n\n| tag | value |\n|---|---|\n{rows}\n"
    )
