"""`train.strategy: auto` against the strategy table, on the sample data, in one run.

The budget is a share (default 40%) of the training seconds the strategy table's five arms took
(docs/results/results.json, written by `transferline experiment strategies`). The train stage's own code
runs with `train.strategy: auto` and that budget: the search on the validation split, then the chosen
configuration on every training row for the table's epochs. The evaluate stage's scoring then reads the
test split, which nothing before it saw. Done when the test accuracy is within 0.5 points of the table's
best arm.

    python bench/strategy_search.py                  # the whole sample (~10 min on 2 quiet cores)
    python bench/strategy_search.py --budget-share 0.2 --workdir /tmp/bench-auto   # reuse a prepared folder

Last line: {"budget_s", "search_seconds", "trials", "chosen", "final_train_seconds", "test_accuracy",
"table_best", "table_best_accuracy", "table_seconds", "gap_points", "within_half_point"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "docs" / "results" / "results.json"
TOLERANCE_POINTS = 0.5  # how close to the table's best arm auto must come, in accuracy points


def table(results: Path) -> tuple[dict, float, int]:
    """(the best strategy arm, the five arms' training seconds together, their epochs)."""
    data = json.loads(results.read_text())
    arms = [a for a in data["arms"] if a["part"] == "strategies"]
    best = max(arms, key=lambda a: a["test_accuracy"])
    return best, sum(a["train_seconds"] for a in arms), best["epochs"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-share", type=float, default=0.4, help="of the table's training seconds")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the strategy table's results.json")
    parser.add_argument("--workdir", type=Path, help="reuse a prepared folder (default: a temporary one)")
    args = parser.parse_args()

    from tasks.runtime import configure_environment

    configure_environment()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench.training import prepare  # the sample split and base model, by the stages themselves
    from tasks.config import load_config
    from tasks.evaluate import score
    from tasks.inference import Predictor
    from tasks.paths import ProjectPaths
    from tasks.prepare import read_split
    from tasks.train import run_train

    best, table_seconds, epochs = table(args.results)
    budget = round(args.budget_share * table_seconds, 1)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-strategy-search-"))
    if not (workdir / "data" / "prepared" / "train.parquet").exists():
        print(f"preparing the sample split and base model in {workdir} ...", flush=True)
        prepare(workdir, None)
    paths = ProjectPaths.at(workdir)
    overrides = {"train.strategy": "auto", "train.time_budget_s": budget, "train.epochs": epochs}
    cfg = load_config(paths.params, overrides)
    print(
        f"auto with a {budget:g} s budget ({args.budget_share:.0%} of the table's {table_seconds:.0f} s) ..."
    )
    started = time.perf_counter()
    trained = run_train(paths, cfg)
    total = time.perf_counter() - started
    result = score(
        Predictor(paths.challenger_dir, cfg.train.max_length), read_split(paths, "test"), cfg, "auto"
    )
    found = trained.search or {}
    trials = found.get("strategy_search", [])
    for t in trials:
        print(
            f"  round {t['round']}  {t['strategy']:<6} lr {t['settings']['learning_rate']:<7g} "
            f"{t['rows']:>5} rows x {t['epochs']}  validation {t['val_accuracy']:.4f}  {t['seconds']:6.1f} s"
        )
    gap = (best["test_accuracy"] - result.accuracy) * 100
    kept = found["chosen"].get("kept_trial")  # the search's own trial trained it: no final training
    final_s = 0.0 if kept else trained.seconds
    print(
        f"chosen {found['chosen']['strategy']} {found['chosen']['settings']}: test accuracy "
        f"{result.accuracy:.4f} vs the table's best ({best['name']}) {best['test_accuracy']:.4f}; "
        f"search {found['seconds']:.0f} s + training {final_s:.0f} s"
        f"{f' (trial {kept} kept)' if kept else ''} = {total:.0f} s"
    )
    figures = {
        "budget_s": budget,
        "search_seconds": found["seconds"],
        "trials": len(trials),
        "chosen": found["chosen"],
        "final_train_seconds": round(final_s, 1),
        "kept_trial": kept,
        "test_accuracy": round(result.accuracy, 4),
        "table_best": best["name"],
        "table_best_accuracy": round(best["test_accuracy"], 4),
        "table_seconds": round(table_seconds, 1),
        "gap_points": round(gap, 2),
        "within_half_point": gap <= TOLERANCE_POINTS,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
