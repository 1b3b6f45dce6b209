"""The evidence flow: learning curve (pretrained vs a tuned random init vs a logistic regression on TF-IDF or
pixels) and strategy table on the project's data, whatever its task.

Composes the prepare and download tasks with one training task per arm; writes tables and plots under
docs/results/ (or the folder given), logs them to MLflow (experiment `<registry.experiment>-evidence`) and
as Prefect artifacts.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks import experiment_progress as progress
from tasks import faults
from tasks.config import Config, load_config
from tasks.download import download_task
from tasks.experiment import (
    MIN_STEPS,
    SCRATCH_LENGTHS,
    SCRATCH_RATES,
    Arm,
    ArmOptions,
    ArmResult,
    curve_arms,
    majority_accuracy,
    run_arm,
    strategy_arms,
)
from tasks.experiment_report import write_results
from tasks.kinds import task_of
from tasks.paths import SPLITS, ProjectPaths
from tasks.prepare import prepare_task, read_split
from tasks.registry import Registry

PARTS = ("learning-curve", "strategies")


@task(name="train-arm", cache_policy=NO_CACHE, task_run_name="arm {arm.name}")
def arm_task(paths: ProjectPaths, cfg: Config, base_path: Any, arm: Arm, options: ArmOptions) -> ArmResult:
    splits = {name: read_split(paths, name) for name in SPLITS}
    task = (task_of(cfg), paths.prepared_dir)
    return run_arm(base_path, splits, cfg.data.labels, cfg.train, arm, cfg.data.seed, options, task)


@flow(name="experiment", description=__doc__)
def experiment(
    project_dir: str = ".",
    parts: list[str] | None = None,
    sizes: list[int] | None = None,
    strategies: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    min_steps: int = MIN_STEPS,
    scratch_rates: list[float] | None = None,
    scratch_lengths: list[int] | None = None,
    results_dir: str | None = None,
) -> dict[str, Any]:
    """Run the evidence arms and return the summary figures.

    Args:
        parts: "learning-curve" and/or "strategies" (default: both).
        sizes: learning-curve training-row counts; 0 = all rows (default: 100, 500, 2000, all).
        strategies: strategy-table rows (default: head, freeze, full, gradual, lora).
        overrides: params.yaml keys changed for every arm, e.g. {"train.epochs": 1}.
        min_steps: fewest optimisation steps of an arm (small subsets get more epochs).
        scratch_rates: learning rates of the scratch arm's grid (default: SCRATCH_RATES).
        scratch_lengths: epoch counts of the scratch arm's grid, as multiples of the pretrained arm's
            (default: SCRATCH_LENGTHS).
        results_dir: where the tables, plots and JSON go, relative to the project (default: docs/results).
    Returns:
        summary.json's object: the figures of the command's last line.
    """
    paths = ProjectPaths.at(project_dir)
    cfg = load_config(paths.params, overrides)
    parts = parts or list(PARTS)
    arms: list[Arm] = []
    if "learning-curve" in parts:
        arms += curve_arms(tuple(sizes)) if sizes else curve_arms()
    if "strategies" in parts:
        arms += strategy_arms(tuple(strategies)) if strategies else strategy_arms()
    options = ArmOptions(
        min_steps, tuple(scratch_rates or SCRATCH_RATES), tuple(scratch_lengths or SCRATCH_LENGTHS)
    )
    prepared = prepare_task(paths, cfg)
    base = download_task(paths, cfg.model)
    out = paths.root / results_dir if results_dir else paths.results_dir
    settings = {  # what makes an earlier run's arm the same arm (params.yaml includes the overrides)
        "params_sha256": cfg.digest(),
        "data_sha256": prepared.source_sha256,
        "base_model": f"{base.model_id}@{base.revision}",
        "options": asdict(options),
    }
    results = _run_arms(paths, cfg, base.path, arms, options, (out, settings))
    kind = task_of(cfg)
    context = {
        "data": f"{cfg.data.source} (source sha256 {prepared.source_sha256[:12]})",
        "test_rows": len(prepared.splits["test"]),
        "majority_class_accuracy": majority_accuracy(prepared.splits["train"], prepared.splits["test"], kind),
        "metric": kind.validation_metric,
        "base_model": f"{base.model_id} @ {base.revision}",
        "machine": _machine(),
        "date": date.today().isoformat(),
        "overrides": overrides or {},
    }
    files = write_results(paths, results, context, out)
    progress.clear(out)
    # the merged results: a part run alone still reports the other part's latest figures
    figures = json.loads((out / "summary.json").read_text())
    _publish(paths, cfg, (parts, arms, options, overrides or {}), results, figures, files)
    return figures


def _publish(
    paths: ProjectPaths,
    cfg: Config,
    run: tuple[list[str], list[Arm], ArmOptions, dict[str, Any]],
    results: list[ArmResult],
    figures: dict[str, Any],
    files: list[Any],
) -> None:
    """Log the evidence run to the registry's evidence experiment and show its tables in Prefect's UI."""
    parts, arms, options, overrides = run
    Registry.for_project(paths).log_evidence(
        experiment=f"{cfg.registry.experiment}-evidence",
        run_name="evidence " + "+".join(parts),
        params={
            "parts": ",".join(parts),
            "arms": ",".join(a.name for a in arms),
            "min_steps": options.min_steps,
            "scratch_rates": ",".join(f"{rate:g}" for rate in options.scratch_rates),
            "scratch_lengths": ",".join(str(n) for n in options.scratch_lengths),
            **overrides,
        },
        metrics={
            **{f"{r.name}.test_accuracy": r.test_accuracy for r in results},
            **{f"{r.name}.train_seconds": r.train_seconds for r in results},
            **{k: float(v) for k, v in figures.items() if isinstance(v, int | float)},
        },
        artifacts=files,
    )
    pages = "\n\n".join(f.read_text() for f in files if f.suffix == ".md")
    create_markdown_artifact(
        markdown=f"{pages}\n\n```json\n{json.dumps(figures)}\n```\n",
        key="transfer-evidence",
        description="Learning curve (with its baselines) and strategy table",
    )


def _run_arms(
    paths: ProjectPaths,
    cfg: Config,
    base_path: Any,
    arms: list[Arm],
    options: ArmOptions,
    record: tuple[Any, dict[str, Any]],
) -> list[ArmResult]:
    """Each arm's result in order: taken from the progress record (`record`: the output folder and the
    run's settings) when an earlier run with the same settings finished it, else trained, then recorded at
    once, so that a stopped run loses at most the arm it was training."""
    out, settings = record
    earlier = progress.finished_arms(out, settings)
    done: list[ArmResult] = []
    for arm in arms:
        kept = earlier.get(arm.name)
        done.append(kept if kept and kept.part == arm.part else arm_task(paths, cfg, base_path, arm, options))
        progress.record_arm(out, settings, list({**earlier, **{r.name: r for r in done}}.values()))
        faults.point("experiment.arm_recorded")
    return done


def _machine() -> str:
    """The CPU the arms' seconds were measured on: its model and whether it has AVX-512, which changes
    torch's CPU speed several-fold between hosts that all say "x86_64, 2 cores"."""
    import os

    cpu, avx512 = platform.machine(), False
    info = Path("/proc/cpuinfo")
    if info.is_file():
        lines = info.read_text(errors="replace").splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
        avx512 = any(line.startswith("flags") and "avx512f" in line.split() for line in lines)
    return f"{cpu}, {os.cpu_count() or 1} cores{', AVX-512' if avx512 else ''}"
