"""`transferline experiment`: the evidence that transfer learning pays, on the project's data."""

from __future__ import annotations

import argparse
import json

from flows.cli_common import Exit, Handler, error, overrides, settings, settings_options
from tasks.config import STRATEGIES, ConfigError

EPILOG = """\
examples:
  transferline experiment                       # learning curve + strategy table (~35 min on 2 CPU cores)
  transferline experiment learning-curve --sizes 100,500
  transferline experiment strategies --strategies head,freeze,lora
  transferline experiment strategies --set train.epochs=1 --set data.max_rows=3000   # a quick look

writes docs/results/{learning_curve,strategies}.{md,png} and results.json, logs them to MLflow
(experiment '<registry.experiment>-evidence'), and prints as its last line one JSON object:
{"best_strategy", "best_test_accuracy", "best_train_seconds", "pretrained_minus_scratch_at_500"}.
"""


def add_commands(sub: argparse._SubParsersAction) -> dict[str, Handler]:
    """Add `experiment` to the CLI's subparsers; returns {"experiment": handler}."""
    p = sub.add_parser(
        "experiment",
        help="Evidence that transfer pays: learning curve (pretrained vs scratch) and strategy table.",
        description="Train every arm on the project's splits and score it on the test split: the "
        "learning curve (pretrained vs the same architecture randomly initialised, at 100 / 500 / 2,000 / "
        "all training rows) and the strategy table (head, freeze, full, gradual, lora).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[settings_options()],  # --set: every arm trains on the overridden settings
    )
    p.add_argument(
        "part", nargs="?", default="all", choices=("all", "learning-curve", "strategies"), help="what to run"
    )
    p.add_argument(
        "--sizes", help="learning-curve training rows, comma-separated; 0 = all (default 100,500,2000,0)"
    )
    p.add_argument("--strategies", help="strategy-table rows, comma-separated (default: all five)")
    p.add_argument(
        "--min-steps", type=int, default=60, help="fewest optimisation steps per arm: small subsets get more "
        "epochs (default 60)",
    )  # fmt: skip
    return {"experiment": cmd_experiment}


def cmd_experiment(args: argparse.Namespace) -> int:
    try:
        paths, _ = settings(args)  # refuse bad parameters before any training
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
        strategies = args.strategies.split(",") if args.strategies else None
    except (ConfigError, ValueError) as err:
        return error(err, Exit.BAD_INPUT)
    if sizes and any(s < 0 for s in sizes):
        return error("--sizes: row counts must be >= 0 (0 = all rows)", Exit.BAD_INPUT)
    unknown = sorted(set(strategies or ()) - set(STRATEGIES))
    if unknown:
        return error(
            f"--strategies: unknown {', '.join(unknown)} (choose from {', '.join(STRATEGIES)})",
            Exit.BAD_INPUT,
        )
    from flows.experiment import PARTS, experiment
    from tasks.experiment import curve_table, strategy_table
    from tasks.registry import RegistryError

    parts = list(PARTS) if args.part == "all" else [args.part]
    try:
        figures = experiment(
            project_dir=str(paths.root),
            parts=parts,
            sizes=sizes,
            strategies=strategies,
            overrides=overrides(args),
            min_steps=args.min_steps,
        )
    except ConfigError as err:
        return error(err, Exit.BAD_INPUT)
    except RegistryError as err:
        return error(err, Exit.BACKEND, f"the tables are written under {paths.rel(paths.results_dir)}/")
    results = json.loads((paths.results_dir / "results.json").read_text())
    from tasks.experiment import ArmResult

    arms = [ArmResult(**a) for a in results["arms"]]
    if "learning-curve" in parts:
        print("\nLearning curve (test accuracy)\n" + curve_table(arms))
    if "strategies" in parts:
        print("\nStrategies\n" + strategy_table(arms))
    print(f"\nwritten: {paths.rel(paths.results_dir)}/ (tables, plots, results.json)")
    print(json.dumps(figures))
    return Exit.OK
