"""The evidence flow: learning curve (pretrained vs random init) and strategy table on the project's data.

Composes the prepare and download tasks with one training task per arm; writes tables and plots under
docs/results/, logs them to MLflow (experiment `<registry.experiment>-evidence`) and as Prefect artifacts.
"""

from __future__ import annotations

import json
import platform
from datetime import date
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.config import Config, load_config
from tasks.download import download_task
from tasks.experiment import (
    MIN_STEPS,
    Arm,
    ArmResult,
    curve_arms,
    curve_table,
    run_arm,
    strategy_arms,
    strategy_table,
    write_results,
)
from tasks.paths import SPLITS, ProjectPaths
from tasks.prepare import prepare_task, read_split
from tasks.registry import Registry

PARTS = ("learning-curve", "strategies")


@task(name="train-arm", cache_policy=NO_CACHE, task_run_name="arm {arm.name}")
def arm_task(paths: ProjectPaths, cfg: Config, base_path: Any, arm: Arm, min_steps: int) -> ArmResult:
    splits = {name: read_split(paths, name) for name in SPLITS}
    return run_arm(base_path, splits, cfg.data.labels, cfg.train, arm, cfg.data.seed, min_steps)


@flow(name="experiment", description=__doc__)
def experiment(
    project_dir: str = ".",
    parts: list[str] | None = None,
    sizes: list[int] | None = None,
    strategies: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    min_steps: int = MIN_STEPS,
) -> dict[str, Any]:
    """Run the evidence arms and return the summary figures.

    Args:
        parts: "learning-curve" and/or "strategies" (default: both).
        sizes: learning-curve training-row counts; 0 = all rows (default: 100, 500, 2000, all).
        strategies: strategy-table rows (default: head, freeze, full, gradual, lora).
        overrides: params.yaml keys changed for every arm, e.g. {"train.epochs": 1}.
        min_steps: fewest optimisation steps of an arm (small subsets get more epochs).
    """
    paths = ProjectPaths.at(project_dir)
    cfg = load_config(paths.params, overrides)
    parts = parts or list(PARTS)
    arms: list[Arm] = []
    if "learning-curve" in parts:
        arms += curve_arms(tuple(sizes)) if sizes else curve_arms()
    if "strategies" in parts:
        arms += strategy_arms(tuple(strategies)) if strategies else strategy_arms()
    prepared = prepare_task(paths, cfg)
    base = download_task(paths, cfg.model)
    results = [arm_task(paths, cfg, base.path, arm, min_steps) for arm in arms]
    context = {
        "data": f"{cfg.data.source} (source sha256 {prepared.source_sha256[:12]})",
        "test_rows": len(prepared.splits["test"]),
        "base_model": f"{base.model_id} @ {base.revision}",
        "machine": f"{platform.machine()}, {_cores()} cores",
        "date": date.today().isoformat(),
        "overrides": overrides or {},
    }
    files = write_results(paths, results, context)
    # the merged results: a part run alone still reports the other part's latest figures
    figures = json.loads((paths.results_dir / "results.json").read_text())["summary"]
    Registry.for_project(paths).log_evidence(
        experiment=f"{cfg.registry.experiment}-evidence",
        run_name="evidence " + "+".join(parts),
        params={"parts": ",".join(parts), "arms": ",".join(a.name for a in arms), **(overrides or {})},
        metrics={
            **{f"{r.name}.test_accuracy": r.test_accuracy for r in results},
            **{f"{r.name}.train_seconds": r.train_seconds for r in results},
            **{k: float(v) for k, v in figures.items() if isinstance(v, int | float)},
        },
        artifacts=files,
    )
    create_markdown_artifact(
        markdown=f"# Evidence\n\n{curve_table(results)}\n\n{strategy_table(results)}\n\n```json\n"
        f"{json.dumps(figures)}\n```\n",
        key="transfer-evidence",
        description="Learning curve and strategy table",
    )
    return figures


def _cores() -> int:
    import os

    return os.cpu_count() or 1
