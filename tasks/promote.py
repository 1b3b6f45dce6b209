"""promote stage: register every challenger in MLflow, and move `champion` only when the gate passed.

Order matters for "nothing lost, nothing wrongly promoted": the version is registered only after its
data and weights are in DVC's remote and after it was evaluated; it gets the `challenger` alias at once;
`champion` moves to it only after a passing gate (and, if configured, a person's approval), through a
compare-and-set against the champion the gate evaluated. Registration is idempotent: a re-run with the
same inputs and weights (e.g. after a crash between creating the version and aliasing it) reuses the
version instead of registering a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput

from tasks.config import Config
from tasks.download import BaseModelRef
from tasks.evaluate import ACCURACY, Evaluation
from tasks.gate import Decision, GateRejected, rejection_message
from tasks.inference import METADATA_FILE
from tasks.kinds import task_of
from tasks.ledger import default_actor
from tasks.paths import ProjectPaths
from tasks.prepare import file_sha256
from tasks.registry import CHALLENGER, CHAMPION, Registry, VersionInfo
from tasks.stages import params_digest
from tasks.validate import ValidationReport

if TYPE_CHECKING:
    from tasks.train import TrainResult

log = logging.getLogger("transferline.promote")


class ApprovalRejected(GateRejected):
    """A person rejected the promotion, or nobody approved it in time."""


class Approval(RunInput):
    """What the Prefect UI (or `transferline approve`) asks the approver."""

    approve: bool
    comment: str = ""
    approver: str = ""


def actor(flow_run_id: str | None = None) -> str:
    """Who moves an alias: the flow run when there is one, else the user on this host."""
    if flow_run_id:
        return f"prefect-flow-run:{flow_run_id}"
    return default_actor()


def flatten(data: dict, prefix: str = "") -> dict[str, str | int | float | bool | None]:
    out: dict[str, str | int | float | bool | None] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str | int | float | bool) or value is None else str(value)
    return out


def model_files_sha256(model_dir: Path) -> dict[str, str]:
    """sha256 of each file of a saved model folder, by file name; transferline.json is not part of the
    registered model (it is logged with the run), so it is left out."""
    return {
        f.name: file_sha256(f) for f in sorted(model_dir.iterdir()) if f.is_file() and f.name != METADATA_FILE
    }


def run_inputs(cfg: Config, data_sha256: str, base: BaseModelRef, code_sha256: str) -> dict[str, str]:
    """Everything a training result depends on, under the names of the version tags that record them."""
    return {
        "data_sha256": data_sha256,  # the prepared split files
        "params_hash": params_digest(cfg),  # every param a stage reads (tasks/stages.py)
        "base_model_sha256": base.sha256,
        "code_sha256": code_sha256,  # every stage's code (caching.code_sha256)
    }


def lineage_tags(
    cfg: Config,
    hashes: dict[str, str],
    base: BaseModelRef,
    trained: TrainResult,
    git: str,
    flow_run: str,
    *,
    code_sha256: str,
    source_sha256: str,
) -> dict[str, str]:
    """What a version must carry to be reproduced: data, params, code and base-model identity."""
    meta = json.loads((trained.model_dir / METADATA_FILE).read_text())
    weights_sha256 = file_sha256(trained.model_dir / "model.safetensors")
    tags = {
        "data_hash": hashes.get("data/prepared", ""),  # DVC md5 of the prepared snapshot (dataset version)
        "data_sha256": meta["data_sha256"],
        "weights_hash": hashes.get("models/challenger", ""),
        "weights_sha256": weights_sha256,
        # Every file the registered model is made of (weights, label map, tokenizer), so whoever loads a
        # version (`transferline serve`) can verify exactly what it downloads before trusting it.
        "model_files_sha256": json.dumps(model_files_sha256(trained.model_dir), sort_keys=True),
        "params_hash": params_digest(cfg),
        "git_commit": git,
        "base_model_id": base.model_id,
        "base_model_revision": base.revision,
        "base_model_sha256": base.sha256,
        "data_source": cfg.data.source,
        "data_source_sha256": source_sha256,  # what the data-watch deployment compares new data with
        "code_sha256": code_sha256,
        "prefect_flow_run_id": flow_run,
    }
    # Same data, params, base model and weights => the same version, whatever run produced it.
    key = "|".join(tags[k] for k in ("data_sha256", "params_hash", "base_model_sha256", "weights_sha256"))
    tags["run_key"] = hashlib.sha256(key.encode()).hexdigest()
    return tags


def model_card(
    cfg: Config,
    version: str,
    tags: dict[str, str],
    evaluation: Evaluation,
    decision: Decision,
    validation: ValidationReport | None,
    trained: TrainResult,
) -> str:
    """A model card (markdown) built from the promotion record."""
    ch, kind = evaluation.challenger, task_of(cfg)
    metrics = ch.metrics()
    headline = (  # entity F1 (micro, exact span and type) leads for a tagger; accuracy for a classifier
        f"Entity F1 {ch.headline:.4f} (micro, exact span and type), precision "
        f"{metrics['test_precision']:.4f}, recall {metrics['test_recall']:.4f}; "
        f"word accuracy {ch.accuracy:.4f}."
        if ch.metric != ACCURACY
        else f"Accuracy {ch.accuracy:.4f}, macro-F1 {ch.macro_f1:.4f}."
    )
    per_class = "\n".join(
        f"| {label} | {m.precision:.4f} | {m.recall:.4f} | {m.f1:.4f} | {m.support} |"
        for label, m in ch.per_class.items()
    )
    frozen = (
        f"strategy `{trained.strategy}`{' (chosen by the search below)' if trained.search else ''} ("
        + ", ".join(
            f"{block} {'adapted' if counts['trainable'] else 'frozen'}"
            for block, counts in trained.layers.items()
        )
        + ")"
    )
    rate = (
        trained.search["chosen"]["settings"]["learning_rate"] if trained.search else cfg.train.learning_rate
    )
    validation_line = (
        f"{'passed' if validation.success else 'FAILED'}: "
        f"{sum(o.success for o in validation.outcomes)}/{len(validation.outcomes)} expectations, "
        f"rows {validation.rows}"
        if validation is not None
        else "not available"
    )
    return f"""# Model card: {cfg.registry.model_name} v{version}

## Model
- Base model: `{tags["base_model_id"]}` at `{tags["base_model_revision"]}`
  (files sha256 `{tags["base_model_sha256"]}`)
- Task: {kind.description} {", ".join(f"`{label}`" for label in cfg.data.labels)}
- Training: fine-tuning with a new classification head; {frozen}; {cfg.train.epochs} epoch(s), batch
  {cfg.train.batch_size}, learning rate {rate:g}, max length {cfg.train.max_length},
  {trained.precision} on {trained.device}; best epoch {trained.best_epoch} of {len(trained.history)} by
  validation accuracy ({trained.best_val_accuracy:.4f}); {trained.trainable_params:,} of
  {trained.total_params:,} parameters trained in {trained.seconds:.0f} s.
- Weights: `model.safetensors` sha256 `{tags["weights_sha256"]}`; params hash `{tags["params_hash"]}`;
  code `{tags["git_commit"]}`.
{search_section(trained.search)}
## Data
- Source: `{cfg.data.source}`; dataset version (DVC md5) `{tags["data_hash"]}`.
- Validation (Great Expectations): {validation_line}.

## Evaluation (held-out test split, {ch.n} rows)
- {headline}

| {"entity type" if ch.metric != ACCURACY else "class"} | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}

## Gate decision
{decision.report_markdown().split(chr(10), 2)[2]}

## Intended use and limitations
- Intended use: {kind.intended_use}.
- Limitations: the scores above hold for data that look like the test split; the model inherits the
  biases of its base model and of the training source. Check the drift and validation reports of new data.
"""


def search_section(found: dict | None) -> str:
    """The model card's account of a strategy search (train.strategy auto); empty without one."""
    if not found:
        return ""
    chosen, trials = found["chosen"], found["strategy_search"]
    settings = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen["settings"].items()
    )
    rows = "\n".join(
        f"| {t['round']} | {t['strategy']} | {t['settings']['learning_rate']:g} "
        f"| {t['rows']} x {t['epochs']} | {t['val_accuracy']:.4f} | {t.get('val_loss', math.nan):.4f} "
        f"| {t['seconds']:.1f} |"
        for t in trials
    )
    skipped = f" Not started, for lack of budget: {'; '.join(found['skipped'])}." if found["skipped"] else ""
    spent = f"{len(trials)} trials in {found['seconds']:.0f} s of a {found['budget_s']:g} s budget"
    best = f"validation accuracy {chosen['val_accuracy']:.4f} in round {chosen['round']}"
    kept = chosen.get("kept_trial")
    final = (
        f"its trial {kept} had trained it on every training row: that model is this one"
        if kept
        else "then trained on every training row"
    )
    return (
        "\n## Strategy search (`train.strategy: auto`)\n"
        f"{spent}, judged on the validation split only ({found['stopped']}).{skipped}\n"
        f"Chosen: `{chosen['strategy']}` with {settings} ({best}); {final}.\n\n"
        "| round | strategy | learning rate | rows x epochs | validation accuracy | validation loss "
        "| seconds |\n"
        f"|---|---|---|---|---|---|---|\n{rows}\n"
    )


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
    """One MLflow run (params, metrics, reports, data) and a version aliased `challenger` (idempotent)."""
    name, who = cfg.registry.model_name, actor(tags.get("prefect_flow_run_id"))
    existing = registry.find_version(name, "run_key", tags["run_key"])
    if existing is not None:
        log.info("v%s already holds these exact inputs and weights: reusing it", existing.version)
        if CHALLENGER not in existing.aliases:
            registry.set_challenger(name, existing.version, actor=who, reason="re-run of identical inputs")
        return registry.get_alias(name, CHALLENGER) or existing
    metrics = {**evaluation.challenger.metrics(), **trained.metrics()}
    if evaluation.champion is not None:
        metrics["champion_test_accuracy"] = evaluation.champion.accuracy
    if evaluation.budgets is not None:
        metrics["latency_p95_ms"] = evaluation.budgets.latency_p95_ms
        metrics["weights_mb"] = evaluation.budgets.weights_mb
    metrics["gate_passed"] = float(decision.passed)
    if decision.interval is not None:  # paired bootstrap CI of the accuracy gain over the champion
        metrics["gain_ci_low"], metrics["gain_ci_high"] = decision.interval.low, decision.interval.high
    if decision.mcnemar is not None:
        metrics["mcnemar_p_value"] = decision.mcnemar.p_value
    artifacts = [
        p
        for p in (
            paths.validation_dir,
            paths.drift_dir,
            paths.evaluation_dir,
            paths.gate_report,
            paths.gate_json,
            paths.prepared_dir,  # the test split doubles as the retention set of later challengers
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
        model_name=name,
        experiment=cfg.registry.experiment,
        model_dir=trained.model_dir,
        params=flatten(cfg.to_dict()),
        metrics=metrics,
        artifacts=artifacts,
        tags=version_tags,
        run_name=f"retrain-{tags.get('prefect_flow_run_id', '')[:8]}",
        actor=who,
    )
    log.info("registered %s version %s as %r", name, info.version, CHALLENGER)
    return info


@task(name="model-card", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def model_card_task(
    registry: Registry,
    cfg: Config,
    version: VersionInfo,
    tags: dict[str, str],
    evaluation: Evaluation,
    decision: Decision,
    validation: ValidationReport | None,
    trained: TrainResult,
) -> str:
    """Write the model card, attach it to the model version and publish it as a Prefect artifact."""
    card = model_card(cfg, version.version, tags, evaluation, decision, validation, trained)
    registry.attach_model_card(cfg.registry.model_name, version.version, card)
    create_markdown_artifact(markdown=card, key="model-card", description=f"Model card v{version.version}")
    return card


def request_approval(cfg: Config, version: VersionInfo, decision: Decision) -> Approval:
    """Pause the flow run until a person approves or rejects (Prefect UI or `transferline approve`).

    Must be called from the flow itself. A timeout counts as a rejection.
    """
    from prefect import runtime
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    timeout = cfg.promote.approval_timeout_s
    log.warning(
        "v%s passed the gate (%s) and waits for approval: approve or reject it in the Prefect UI, or run "
        "`transferline approve %s [--reject] --comment ...` within %d s",
        version.version, decision.summary(), runtime.flow_run.id, timeout,
    )  # fmt: skip
    try:
        return pause_flow_run(
            wait_for_input=Approval.with_initial_data(
                description=f"Promote {cfg.registry.model_name} v{version.version} to champion? "
                f"{decision.summary()}",
                approve=False,
            ),
            timeout=timeout,
            poll_interval=max(1, min(10, timeout // 10)),
        )
    except FlowPauseTimeout:
        return Approval(approve=False, comment=f"no decision within {timeout} s", approver="timeout")


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(
    registry: Registry,
    cfg: Config,
    version: VersionInfo,
    decision: Decision,
    flow_run_id: str | None = None,
    approval: Approval | None = None,
) -> str:
    """Move `champion` to the new version, or raise GateRejected saying why and what stays in place."""
    if version.version == decision.champion_version:
        # Same data, params, base model and weights as the champion (registration is keyed on them): the
        # run reproduced the champion exactly. Nothing to promote, and nothing went wrong.
        log.info("v%s is already champion: this run reproduced it exactly", version.version)
        return version.version
    if not decision.passed:
        raise GateRejected(rejection_message(decision, version.version))
    approval_record = approval.model_dump() if approval is not None else None
    if approval is not None and not approval.approve:
        raise ApprovalRejected(
            f"promotion of v{version.version} rejected by {approval.approver or 'an approver'}"
            f"{': ' + approval.comment if approval.comment else ''}. It stays registered as 'challenger'."
        )
    # Compare-and-set against the champion the gate evaluated: a concurrent promotion is refused.
    registry.promote(
        cfg.registry.model_name,
        version.version,
        expected_champion=decision.champion_version,
        actor=actor(flow_run_id),
        reason=decision.summary(),
        gate={"passed": decision.passed, "failed": [c.name for c in decision.failed]},
        approval=approval_record,
    )
    log.info("promoted %s version %s to %r", cfg.registry.model_name, version.version, CHAMPION)
    return version.version
