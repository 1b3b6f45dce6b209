"""Benchmark: what caching saves on an unchanged re-run, and what orchestration costs on a first run.

Run from the project root: ``python bench/ops.py [--rows 3000] [--epochs 2]``. Not a test: it prints a
table and ends with one JSON line ``{"rerun_ratio": ..., "overhead_ratio": ..., "new_versions_on_rerun":
..., ...}``.

In a fresh project (a copy of this one's dvc.yaml, params.yaml and tasks/ in a temp folder, with git, DVC
and a local DVC remote; MLflow in SQLite there; Prefect's temporary local server), on the packaged
rotten-tomatoes reviews subsampled to --rows and the packaged MiniLM, this process runs the retrain flow
twice with the same inputs:

* first run: every step computes (prepare, validate, download, drift, fine-tune, evaluate, gate, DVC
  commit + push, register, promote) and version 1 becomes champion;
* unchanged re-run: the same call again.

``rerun_ratio`` = re-run wall time / first-run wall time (goal <= 0.05, and no new version).
``overhead_ratio`` = first-run wall time / the sum of its steps' core time (goal <= 1.05): the core time of a
step is the time spent in its task function's body (measured by wrapping each task's function), so
Prefect's state handling, cache keys and result persistence, and the flow's own glue count as overhead.
Before timing, the heavy libraries are imported and the temporary Prefect server is started, so that
neither run pays for them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_project(base: Path, rows: int, epochs: int) -> Path:
    from tests.conftest import make_project as scaffold

    return scaffold(
        base,
        {
            "data.max_rows": rows,
            "train.epochs": epochs,
            "gate.min_accuracy": 0.5,  # the first run must promote whatever --rows/--epochs give
            "gate.max_latency_ms": 1.0e6,  # and not depend on this machine's load
        },
    )


def instrument(core: dict[str, list[float]]) -> None:
    """Time the body of every task the retrain flow calls (the tasks keep their source for cache keys)."""
    from prefect import Task

    import flows.retrain as module

    for task in {t for t in vars(module).values() if isinstance(t, Task)}:
        body = task.fn

        @functools.wraps(body)
        def timed(*args, _body=body, _name=task.name, **kwargs):
            started = time.perf_counter()
            try:
                return _body(*args, **kwargs)
            finally:
                core[_name].append(time.perf_counter() - started)

        task.fn = timed


def warm_up() -> None:
    """Import what a run imports and start Prefect's temporary server, outside the timed runs."""
    import great_expectations  # noqa: F401
    import mlflow  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from prefect import flow

    @flow
    def ready() -> int:
        return 1

    ready()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3000, help="reviews used (data.max_rows)")
    parser.add_argument("--epochs", type=int, default=2, help="train.epochs")
    args = parser.parse_args()

    from tasks.runtime import configure_environment

    configure_environment()
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    base = Path(tempfile.mkdtemp(prefix="transferline-bench-ops-"))
    os.environ["PREFECT_HOME"] = str(base / "prefect-home")  # never share Prefect's state with other runs
    try:
        project = make_project(base, args.rows, args.epochs)
        warm_up()
        from flows.retrain import retrain
        from tasks.paths import ProjectPaths
        from tasks.registry import Registry

        core: dict[str, list[float]] = defaultdict(list)
        instrument(core)
        registry = Registry.for_project(ProjectPaths.at(project))
        name = "transferline-sentiment"

        started = time.perf_counter()
        first = retrain(project_dir=str(project))
        first_wall = time.perf_counter() - started
        first_core = {step: sum(times) for step, times in core.items()}
        versions_after_first = len(registry.list_versions(name))
        core.clear()

        started = time.perf_counter()
        again = retrain(project_dir=str(project))
        rerun_wall = time.perf_counter() - started
        rerun_core = {step: sum(times) for step, times in core.items()}
        new_versions = len(registry.list_versions(name)) - versions_after_first
    finally:
        shutil.rmtree(base, ignore_errors=True)

    core_sum = sum(first_core.values())
    print(f"\nretrain flow, {args.rows} reviews, {args.epochs} epoch(s); first run promoted v{first.version}")
    print(f"{'step':<16} {'first run core s':>17} {'re-run core s':>14}")
    for step in first_core:
        rerun = f"{rerun_core[step]:.2f}" if step in rerun_core else "skipped/cached"
        print(f"{step:<16} {first_core[step]:>17.2f} {rerun:>14}")
    print(f"{'sum of steps':<16} {core_sum:>17.2f} {sum(rerun_core.values()):>14.2f}")
    print(f"{'flow wall time':<16} {first_wall:>17.2f} {rerun_wall:>14.2f}")
    print(f"re-run: v{again.version} (champion v{again.champion_version}), {new_versions} new version(s)\n")
    print(
        json.dumps(
            {
                "rerun_ratio": round(rerun_wall / first_wall, 4),
                "overhead_ratio": round(first_wall / core_sum, 4),
                "new_versions_on_rerun": new_versions,
                "first_run_s": round(first_wall, 2),
                "rerun_s": round(rerun_wall, 2),
                "first_run_steps_core_s": round(core_sum, 2),
                "rows": args.rows,
                "epochs": args.epochs,
            }
        )
    )


if __name__ == "__main__":
    main()
