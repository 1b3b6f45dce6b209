"""`transferline experiment`: the evidence that transfer learning pays, on the project's data."""

from __future__ import annotations

import argparse
import json

from flows.cli_common import Exit, Handler, error, overrides, settings, settings_options
from tasks.config import STRATEGIES, ConfigError
from tasks.experiment import CURVE_SIZES, MIN_STEPS, SCRATCH_LENGTHS, SCRATCH_RATES

EPILOG = """\
examples:
  transferline experiment                       # learning curve + strategy table (hours on 2 CPU cores)
  transferline experiment learning-curve --sizes 100,500
  transferline experiment learning-curve --sizes 2000 --scratch-rates 3e-4,1e-3 --scratch-lengths 3
  transferline experiment strategies --strategies head,freeze,lora
  transferline experiment strategies --set train.epochs=1 --set data.max_rows=3000   # a quick look

writes docs/results/{learning_curve,strategies}.{md,png}, results.json and summary.json, logs them to
MLflow (experiment '<registry.experiment>-evidence'), and prints as its last line summary.json's object:
{"best_strategy", "best_test_accuracy", "best_train_seconds", "majority_class_accuracy",
 "pretrained_minus_scratch_at_500", "scratch_at_2000", "classical_at_500", "classical_at_2000",
 "pretrained_minus_classical_at_500"}.

Stopped (Ctrl-C, a reboot)? Run the same command again: each finished arm is recorded at once in
<output>/.progress.json, and a run with the same settings takes those arms instead of training them again.
"""


def _csv(kind: type, text: str | None) -> list | None:
    """A comma-separated option as a list of `kind` (None when the option was not given)."""
    return [kind(item) for item in text.split(",")] if text else None


def add_commands(sub: argparse._SubParsersAction) -> dict[str, Handler]:
    """Add `experiment` to the CLI's subparsers; returns {"experiment": handler}."""
    p = sub.add_parser(
        "experiment",
        help="Evidence that transfer pays: learning curve (pretrained vs baselines) and strategy table.",
        description="Train every arm on the project's splits and score it on the test split: the "
        "learning curve (the pretrained model vs the same architecture randomly initialised with its own "
        "learning rate and length chosen on validation, vs TF-IDF + logistic regression, at 100 / 500 / "
        "2,000 / all training rows) and the strategy table (head, freeze, full, gradual, lora).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[settings_options()],  # --set: every arm trains on the overridden settings
    )
    p.add_argument(
        "part", nargs="?", default="all", choices=("all", "learning-curve", "strategies"), help="what to run"
    )
    p.add_argument(
        "--sizes", help="learning-curve training rows, comma-separated; 0 = all "
        f"(default {','.join(map(str, CURVE_SIZES))})",
    )  # fmt: skip
    p.add_argument("--strategies", help="strategy-table rows, comma-separated (default: all five)")
    p.add_argument(
        "--min-steps", type=int, default=MIN_STEPS, help="fewest optimisation steps per arm: small subsets "
        f"get more epochs (default {MIN_STEPS})",
    )  # fmt: skip
    p.add_argument(
        "--scratch-rates", help="learning rates the scratch arm tries, comma-separated; the best on "
        f"validation is kept (default {','.join(f'{r:g}' for r in SCRATCH_RATES)})",
    )  # fmt: skip
    p.add_argument(
        "--scratch-lengths", help="epoch counts the scratch arm tries, as multiples of the pretrained arm's, "
        f"comma-separated (default {','.join(map(str, SCRATCH_LENGTHS))})",
    )  # fmt: skip
    p.add_argument(
        "--output", help="folder for the tables, plots and JSON, relative to the project (default: "
        "docs/results; e.g. docs/results/images for an image project's evidence)",
    )  # fmt: skip
    return {"experiment": cmd_experiment}


def _choices(args: argparse.Namespace) -> dict[str, list | None]:
    """The command's arm choices as the flow's keyword arguments; ValueError names a bad option."""
    choices = {
        "sizes": _csv(int, args.sizes),
        "strategies": _csv(str, args.strategies),
        "scratch_rates": _csv(float, args.scratch_rates),
        "scratch_lengths": _csv(int, args.scratch_lengths),
    }
    if any(s < 0 for s in choices["sizes"] or ()):
        raise ValueError("--sizes: row counts must be >= 0 (0 = all rows)")
    if not all(0 < r <= 1 for r in choices["scratch_rates"] or ()):
        raise ValueError("--scratch-rates: learning rates must lie in (0, 1]")
    if any(n < 1 for n in choices["scratch_lengths"] or ()):
        raise ValueError("--scratch-lengths: multiples of the epochs must be >= 1")
    unknown = sorted(set(choices["strategies"] or ()) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"--strategies: unknown {', '.join(unknown)} (choose from {', '.join(STRATEGIES)})")
    return choices


def cmd_experiment(args: argparse.Namespace) -> int:
    try:
        paths, _ = settings(args)  # refuse bad parameters before any training
        choices = _choices(args)
    except (ConfigError, ValueError) as err:
        return error(err, Exit.BAD_INPUT)
    from flows.experiment import PARTS, experiment
    from tasks.experiment_report import curve_table, load_results, strategy_table
    from tasks.registry import RegistryError

    parts = list(PARTS) if args.part == "all" else [args.part]
    out = paths.root / args.output if args.output else paths.results_dir
    try:
        figures = experiment(
            project_dir=str(paths.root),
            parts=parts,
            overrides=overrides(args),
            min_steps=args.min_steps,
            results_dir=args.output,
            **choices,
        )
    except ConfigError as err:
        return error(err, Exit.BAD_INPUT)
    except RegistryError as err:
        return error(err, Exit.BACKEND, f"the tables are written under {paths.display(out)}/")
    context, arms = load_results(paths, out)
    if "learning-curve" in parts:
        print("\nLearning curve (test accuracy)\n" + curve_table(arms, context))
    if "strategies" in parts:
        print("\nStrategies\n" + strategy_table(arms))
    print(f"\nwritten: {paths.display(out)}/ (tables, plots, results.json, summary.json)")
    print(json.dumps(figures))
    return Exit.OK
