"""The retraining flow: prepare -> champion -> validate -> drift -> fine-tune -> evaluate -> gate -> promote.

It only composes the stage tasks of tasks/ (the same functions dvc.yaml runs) and records the result:
DVC for data and weights, MLflow for the run and the model version. Steps whose inputs did not change are
skipped (Prefect cache policies, tasks/caching.py), and a run whose inputs are exactly those the champion
was trained on stops right after preparing the data. Runs in Prefect's ephemeral mode by default, against
a server when PREFECT_API_URL is set, or as the `retrain/transferline` deployment (flows/deployments.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from prefect import flow, runtime
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from tasks import workspace
from tasks.caching import code_sha256, in_project
from tasks.champion import Champion, champion_task
from tasks.config import Config, ConfigError, GateMode, StrategyChoice, TimeBudget, load_config
from tasks.download import download_task
from tasks.drift import drift_task
from tasks.evaluate import ACCURACY, evaluate_task
from tasks.gate import gate_task
from tasks.paths import ProjectPaths
from tasks.prepare import data_sha256, prepare_task
from tasks.promote import (
    lineage_tags,
    model_card_task,
    promote_task,
    register_task,
    request_approval,
    run_inputs,
)
from tasks.registry import Registry
from tasks.train import train_task
from tasks.validate import validate_task
from tasks.versioning import PIPELINE_STAGES, commit_task, git_commit, push_task

log = logging.getLogger("transferline.retrain")

# The flow's typed parameters (the Prefect UI's run form) and the params.yaml key each one sets.
FORM_KEYS = {
    "data_source": "data.source",
    "base_model": "model.source",
    "strategy": "train.strategy",
    "time_budget_s": "train.time_budget_s",
    "epochs": "train.epochs",
    "gate_mode": "gate.mode",
}


def run_overrides(overrides: dict[str, Any] | None, **form: Any) -> dict[str, Any]:
    """Merge the form's typed parameters (None = as in params.yaml) into the dotted-key overrides."""
    merged = dict(overrides or {})
    for name, value in form.items():
        if value is None:
            continue
        key = FORM_KEYS[name]
        if key in merged and merged[key] != value:
            raise ConfigError(
                f"{name}={value!r} and overrides[{key!r}]={merged[key]!r} disagree: set the key in one place"
            )
        merged[key] = value
    return merged


@dataclass(frozen=True)
class RunSummary:
    model_name: str
    version: str
    promoted: bool
    test_accuracy: float
    champion_version: str | None  # the champion the challenger was compared with
    data_hash: str
    report: str
    test_metric: str = "test accuracy"  # how the headline is named: "test accuracy" or "test entity F1"
    test_score: float | None = None  # its value (None: test_accuracy)


@flow(name="retrain", description=__doc__)
def retrain(
    project_dir: str = ".",
    overrides: dict[str, Any] | None = None,
    data_source: str | None = None,
    base_model: str | None = None,
    strategy: StrategyChoice | None = None,
    time_budget_s: TimeBudget | None = None,
    epochs: Annotated[int | None, Field(ge=1, le=100)] = None,
    gate_mode: GateMode | None = None,
) -> RunSummary:
    """One retraining run of the project in `project_dir`. Empty fields keep the value of params.yaml.

    Args:
        project_dir: folder holding params.yaml and dvc.yaml.
        overrides: any other params.yaml keys to change for this run, dotted, e.g. {"train.batch_size": 16}.
        data_source: dataset (data.source): sample://rotten-tomatoes, a path or file:// URI to a .csv,
            .parquet or .jsonl file, or hf-dataset://.
        base_model: pretrained model (model.source): package://DIST, file:///abs/dir or
            hf://org/name@revision.
        strategy: transfer-learning strategy (train.strategy): head, freeze, full, gradual or lora; or
            auto, which searches them within time_budget_s.
        time_budget_s: seconds auto's search over strategies and learning rates may take
            (train.time_budget_s); the chosen configuration then trains on top of them.
        epochs: passes over the training split (train.epochs).
        gate_mode: promotion rule (gate.mode): superiority (must beat the champion significantly) or
            non_inferiority (may not be worse by more than gate.margin).
    """
    paths = ProjectPaths.at(project_dir)
    form = dict(data_source=data_source, base_model=base_model, strategy=strategy)
    form |= dict(time_budget_s=time_budget_s, epochs=epochs, gate_mode=gate_mode)
    cfg = load_config(paths.params, run_overrides(overrides, **form))
    # Runs of one folder share its data, models, reports and DVC state: one at a time (tasks/workspace.py).
    with workspace.exclusive(paths, cfg.ops.run_lock_wait_s):
        return _steps(paths, cfg)


def _steps(paths: ProjectPaths, cfg: Config) -> RunSummary:
    """The flow's steps, in order, for the folder this run holds."""
    registry = Registry.for_project(paths)
    # Steps whose inputs did not change since a previous run are skipped (tasks/caching.py).
    prepare, commit, validate, drift, train, evaluate, gate = in_project(
        paths, prepare_task, commit_task, validate_task, drift_task, train_task, evaluate_task, gate_task
    )

    prepared = prepare(paths, cfg)
    # The snapshot is versioned whatever happens next: with every other stage's outputs when the run gets
    # that far (one DVC process), on its own when the run stops before (validation rejecting it, say).
    try:
        base = download_task(paths, cfg.model)
        champion = champion_task(registry, cfg, paths)  # also writes models/champion.json
        code = code_sha256()  # every stage's code
        # same data, params, model and code as the champion's: nothing to train
        reproduced = champion is not None and champion.trained_on(
            run_inputs(cfg, data_sha256(paths), base, code)
        )
        if not reproduced:
            reference = champion.reference() if champion else None  # new data must resemble the champion's
            validation = validate(paths, cfg, reference)
            drift(paths, cfg, reference, base.path)  # raises DriftBlocked when a `block` check drifted
            trained = train(paths, cfg, base)
            evaluation = evaluate(paths, cfg, champion)
            decision = gate(paths, cfg, evaluation)
    except BaseException:
        _version_prepared(commit, paths, cfg)
        raise
    if reproduced:  # committed here, outside the block above: a failing commit is not tried twice
        commit(paths, cfg, ("prepare",))
        return _reproduced(cfg.registry.model_name, champion)
    hashes = commit(paths, cfg, PIPELINE_STAGES)
    push_task(paths)  # data and weights reach the remote before any version points at them
    flow_run_id = str(runtime.flow_run.id or "")
    tags = lineage_tags(
        cfg, hashes, base, trained, git_commit(paths.root), flow_run_id or "local",
        code_sha256=code, source_sha256=prepared.source_sha256,
    )  # fmt: skip
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
        test_metric=f"test {evaluation.challenger.headline_name}",
        test_score=evaluation.challenger.headline,
    )


def _version_prepared(commit: Callable[..., dict[str, str]], paths: ProjectPaths, cfg: Config) -> None:
    """Commit the prepared snapshot of a run that stopped early; a failure to do so is logged, never
    raised over the reason the run stopped."""
    try:
        commit(paths, cfg, ("prepare",))
    except Exception as err:
        log.warning("the prepared data of this stopped run could not be versioned: %s", err)


def _reproduced(name: str, champion: Champion) -> RunSummary:
    keys = ("data_sha256", "params_hash", "code_sha256")
    ids = ", ".join(f"{key} `{champion.tags[key][:12]}`" for key in keys)
    report = (
        f"# {name}: nothing to do\n\nThe champion v{champion.version} was trained on exactly these inputs "
        f"({ids}, base model `{champion.tags['base_model_sha256'][:12]}`): a run would reproduce it. "
        "Nothing was trained and no version was registered.\n"
    )
    create_markdown_artifact(markdown=report, key="retrain-summary", description="Retraining run summary")
    return RunSummary(
        model_name=name,
        version=champion.version,
        promoted=True,
        test_accuracy=champion.test_accuracy if champion.test_accuracy is not None else float("nan"),
        champion_version=champion.version,
        data_hash=champion.tags.get("data_hash", ""),
        report=report,
    )


def _summary_markdown(name: str, version: str, passed: bool, evaluation: Any, tags: dict[str, str]) -> str:
    ch, champ = evaluation.challenger, evaluation.champion
    champion = f"{champ.headline:.4f} (v{evaluation.champion_version})" if champ else "—"
    # the headline first (accuracy, or entity F1 with the word accuracy beside it), then macro-F1 over classes
    extra = f"| word accuracy | {ch.accuracy:.4f} | |\n" if ch.metric != ACCURACY else ""
    rows = "\n".join(f"| {k} | `{v}` |" for k, v in tags.items())
    outcome = "promoted to `champion`" if passed else "kept as `challenger` (gate failed)"
    return (
        f"# {name} v{version}: {outcome}\n\n"
        f"| metric | challenger | champion |\n|---|---|---|\n"
        f"| test {ch.headline_name} | {ch.headline:.4f} | {champion} |\n{extra}"
        f"| macro-F1 | {ch.macro_f1:.4f} | |\n\n"
        f"## Lineage\n\n| tag | value |\n|---|---|\n{rows}\n"
    )
