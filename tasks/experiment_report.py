"""What `transferline experiment` writes under docs/results/: tables, plots, results.json and summary.json.

summary.json holds the same object as the command's last line.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from tasks.experiment import INITS, ArmResult, arm_name

if TYPE_CHECKING:
    from pathlib import Path

    from tasks.paths import ProjectPaths

# The classical arm's names come from the baseline the results hold (tasks/classical.py DESCRIPTIONS).
COLUMNS = {
    "pretrained": "pretrained",
    "scratch": "from scratch, tuned",
    "classical": "{long}",
}
NOTE_NAMES = {
    "pretrained": "The pretrained model",
    "scratch": "The randomly initialised model, with the best setting of its validation grid,",
    "classical": "{long}, with its regularisation chosen on validation,",
}
PLOT_LABELS = {
    "pretrained": "pretrained",
    "scratch": "same architecture, random init (tuned on validation)",
    "classical": "{long} (tuned on validation)",
}
# An arm learned something only when its test accuracy is this many standard errors of a test accuracy
# (at the majority class's share) above the majority class: one row more is chance, not learning.
LEARNED_STANDARD_ERRORS = 2.0


def classical_names(results: list[ArmResult]) -> dict[str, str]:
    """{"long", "short"}: what the tables call the classical baseline the results hold (text's when
    they hold none)."""
    from tasks.classical import DESCRIPTIONS, NAME

    used = next((r.strategy for r in results if r.init == "classical"), NAME)
    long, short = DESCRIPTIONS.get(used, DESCRIPTIONS[NAME])
    return {"long": long, "short": short}


def metric_of(results: list[ArmResult]) -> str:
    """What the results' scores are: "accuracy", or a tagger's "entity F1" (one metric per project)."""
    return next((r.metric for r in results), "accuracy")


def _floor_name(metric: str) -> str:
    """The floor every arm must clear, in words."""
    if metric == "accuracy":
        return "Majority class (always the training split's most common label)"
    return f"Always the most common tag (`O`: no entity found), test {metric}"


def learned(accuracy: float, majority: float, test_rows: int) -> bool:
    """Whether `accuracy` is clearly above always answering the majority class."""
    return accuracy - majority > LEARNED_STANDARD_ERRORS * _standard_error(majority, test_rows)


def _standard_error(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / max(n, 1))


# -- tables --------------------------------------------------------------------------------------------


def _curve(results: list[ArmResult]) -> dict[int, dict[str, ArmResult]]:
    """Learning-curve arms by training rows (arms of one size share one subsample) and init."""
    by_rows: dict[int, dict[str, ArmResult]] = {}
    for r in results:
        if r.part == "learning-curve":
            by_rows.setdefault(r.train_rows, {})[r.init] = r
    return dict(sorted(by_rows.items()))


def curve_table(results: list[ArmResult], context: dict[str, Any]) -> str:
    """Test accuracy of each init at each size, the gaps, and what the majority class scores."""
    majority, n = context["majority_class_accuracy"], context["test_rows"]
    names = classical_names(results)
    head = " | ".join(COLUMNS[i].format(**names) for i in INITS)
    lines = [
        f"| training rows | {head} | pretrained − scratch | pretrained − {names['short']} |",
        "|---:|" + "---:|" * (len(INITS) + 2),
    ]
    for rows, arms in _curve(results).items():
        cells = [_acc(arms.get(init), majority, n) for init in INITS]
        gaps = [_gap(arms.get("pretrained"), arms.get(other)) for other in ("scratch", "classical")]
        lines.append(f"| {rows:,} | " + " | ".join(cells + gaps) + " |")
    return "\n".join(lines) + "\n\n" + _majority_note(results, majority, n)


def _acc(r: ArmResult | None, majority: float, n: int) -> str:
    if r is None:
        return "—"
    return f"{r.test_accuracy:.4f}" + ("" if learned(r.test_accuracy, majority, n) else " (≈ majority)")


def _gap(a: ArmResult | None, b: ArmResult | None) -> str:
    return f"{a.test_accuracy - b.test_accuracy:+.4f}" if a and b else "—"


def _majority_note(results: list[ArmResult], majority: float, n: int) -> str:
    """Says plainly which arms did not beat the majority class, and at which sizes."""
    metric = metric_of(results)
    note = (
        f"{_floor_name(metric)}: {majority:.4f}. "
        f'"≈ majority" marks a test {metric} not above it by more than {LEARNED_STANDARD_ERRORS:g} standard '
        f"errors ({LEARNED_STANDARD_ERRORS * _standard_error(majority, n):.4f} on {n:,} test rows)."
    )
    failed: dict[str, list[str]] = {}
    for arms in _curve(results).values():
        for init, r in arms.items():
            if not learned(r.test_accuracy, majority, n):
                failed.setdefault(init, []).append(f"{r.train_rows:,}")
    if not failed:
        return note + " Every arm beats the majority class at every size."
    names = classical_names(results)
    for init, sizes in failed.items():
        note += (
            f"\n\n**{NOTE_NAMES[init].format(**names)} does not beat the majority class at"
            f" {', '.join(sizes)} training rows:"
            " there it learned nothing usable.**"
        )
    return note


def choices_table(results: list[ArmResult]) -> str:
    """What each tuned arm chose on the validation split, and what its grid cost."""
    short = classical_names(results)["short"]
    lines = [
        "| training rows | pretrained: epochs, time (s) | from scratch: rate, epochs (best epoch) "
        f"| validation | scratch grid: runs, time (s) | {short}: setting | validation |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rows, arms in _curve(results).items():
        pre, scratch, classical = (arms.get(i) for i in INITS)
        cells = [
            f"{pre.epochs}, {pre.train_seconds:.0f}" if pre else "—",
            *(_scratch_choice(scratch) if scratch else ["—"] * 3),
            ", ".join(f"{k}={v:g}" for k, v in classical.settings.items()) if classical else "—",
            f"{classical.best_val_accuracy:.4f}" if classical else "—",
        ]
        lines.append(f"| {rows:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _scratch_choice(r: ArmResult) -> list[str]:
    """[chosen rate, epochs (best epoch)], [its validation accuracy], [grid runs, grid seconds]."""
    chosen = _chosen_cell(r)
    setting = f"{chosen['learning_rate']:.0e}, {chosen['epochs']} ({chosen['best_epoch']})" if chosen else "—"
    grid = f"{len(r.grid)}, {sum(c['seconds'] for c in r.grid):.0f}" if r.grid else "—"
    return [setting, f"{r.best_val_accuracy:.4f}", grid]


def _chosen_cell(r: ArmResult) -> dict[str, Any] | None:
    """The grid cell an arm kept (None for arms without a grid)."""
    return next((c for c in r.grid if c.get("chosen")), None)


def scratch_grid_table(results: list[ArmResult]) -> str:
    """Validation accuracy of every cell of the scratch grid; the chosen one in bold."""
    scratch = [arms["scratch"] for arms in _curve(results).values() if arms.get("scratch")]
    rates = sorted({c["learning_rate"] for r in scratch for c in r.grid})
    lines = [
        "| training rows | epochs | " + " | ".join(f"rate {rate:.0e}" for rate in rates) + " |",
        "|---:|---:|" + "---:|" * len(rates),
    ]
    for r in scratch:
        chosen = _chosen_cell(r)
        for epochs in sorted({c["epochs"] for c in r.grid}):
            cells = {c["learning_rate"]: c for c in r.grid if c["epochs"] == epochs}
            shown = [_cell(cells.get(rate), cells.get(rate) is chosen) for rate in rates]
            lines.append(f"| {r.train_rows:,} | {epochs} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def _cell(cell: dict[str, Any] | None, chosen: bool) -> str:
    if cell is None:
        return "—"
    if cell["val_accuracy"] is None:
        return "diverged"
    return f"**{cell['val_accuracy']:.4f}**" if chosen else f"{cell['val_accuracy']:.4f}"


def strategy_table(results: list[ArmResult]) -> str:
    lines = [
        f"| strategy | test {metric_of(results)} | train time (s) | adapting parameters | share | settings |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.part != "strategies":
            continue
        settings = ", ".join(f"{k}={v}" for k, v in r.settings.items() if k != "strategy") or "params.yaml"
        lines.append(
            f"| {r.strategy} | {r.test_accuracy:.4f} | {r.train_seconds:.0f} | {r.trainable_params:,} | "
            f"{r.trainable_params / r.total_params:.1%} | {settings}; {r.epochs} epoch(s) |"
        )
    return "\n".join(lines)


def curve_page(results: list[ArmResult], context: dict[str, Any]) -> str:
    """learning_curve.md: the curve, then what the tuned arms chose on validation."""
    return (
        f"# Learning curve\n\n{_header(context)}\n{curve_table(results, context)}\n\n"
        "## Chosen on the validation split\n\n"
        f"Test {metric_of(results)} above is of the setting each arm chose here; the test split played no "
        f"part in it.\n\n{choices_table(results)}\n\n"
        f"## The scratch grid: best validation {metric_of(results)} of each run\n\n"
        f"{scratch_grid_table(results)}\n"
    )


def _header(context: dict[str, Any]) -> str:
    return (
        f"Data: {context['data']}; test rows: {context['test_rows']}; base model: {context['base_model']}; "
        f"machine: {context['machine']}; {context['date']}.\n"
    )


# -- plots ---------------------------------------------------------------------------------------------


def plot_curve(results: list[ArmResult], context: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    curve = _curve(results).values()
    for init in INITS:
        pts = sorted((arms[init].train_rows, arms[init].test_accuracy) for arms in curve if init in arms)
        if pts:
            label = PLOT_LABELS[init].format(**classical_names(results))
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.axhline(context["majority_class_accuracy"], color="grey", linestyle="--", label="majority class")
    ax.set_xscale("log")
    ax.set_xlabel("training examples")
    ax.set_ylabel(f"test {metric_of(results)}")
    ax.set_title("Learning curve: transfer vs baselines that learn")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_strategies(results: list[ArmResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.part == "strategies"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r.train_seconds for r in rows], [r.test_accuracy for r in rows])
    for r in rows:
        ax.annotate(
            f"{r.strategy} ({r.trainable_params / r.total_params:.1%})", (r.train_seconds, r.test_accuracy)
        )
    ax.set_xlabel("training time (s)")
    ax.set_ylabel(f"test {metric_of(results)}")
    ax.set_title(f"Strategies: {metric_of(results)} vs training time (share of parameters adapting)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- summary and files ---------------------------------------------------------------------------------


def summary(results: list[ArmResult], context: dict[str, Any]) -> dict[str, Any]:
    """The figures of the evidence command's last line and of summary.json.

    best_*: the arm with the best test accuracy among all arms (both parts; a strategy name or a
    learning-curve arm such as pretrained@all). *_at_N: learning-curve arms at N training rows (None when
    not run).
    """
    best = max(results, key=lambda r: r.test_accuracy, default=None)
    acc = {r.name: r.test_accuracy for r in results if r.part == "learning-curve"}

    def at(init: str, rows: int) -> float | None:
        return acc.get(arm_name(init, rows))

    def minus(a: float | None, b: float | None) -> float | None:
        return round(a - b, 4) if a is not None and b is not None else None

    return {
        "best_strategy": best.name if best else None,
        "best_test_accuracy": round(best.test_accuracy, 4) if best else None,
        "best_train_seconds": round(best.train_seconds, 1) if best else None,
        "majority_class_accuracy": round(context["majority_class_accuracy"], 4),
        "pretrained_minus_scratch_at_500": minus(at("pretrained", 500), at("scratch", 500)),
        "scratch_at_2000": _round(at("scratch", 2000)),
        "classical_at_500": _round(at("classical", 500)),
        "classical_at_2000": _round(at("classical", 2000)),
        "pretrained_minus_classical_at_500": minus(at("pretrained", 500), at("classical", 500)),
    }


def _round(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def load_results(paths: ProjectPaths, out: Path | None = None) -> tuple[dict[str, Any], list[ArmResult]]:
    """(context, arms) of docs/results/results.json (or `out`'s); ({}, []) before the first run."""
    data = _read(paths, out)
    return data.get("context", {}), [ArmResult.from_dict(a) for a in data.get("arms", [])]


def _read(paths: ProjectPaths, out: Path | None) -> dict[str, Any]:
    path = (out or paths.results_dir) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def part_contexts(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each part's context (data, machine, date) in results.json: a part's arms keep the context of the
    run that trained them when another run adds the other part (older files hold one context for all)."""
    shared = data.get("context", {})
    return {part: data.get("contexts", {}).get(part, shared) for part in ("learning-curve", "strategies")}


SAME_RUN_KEYS = ("data", "test_rows", "base_model", "metric", "overrides")


def _replace_part(
    kept: list[ArmResult], new: list[ArmResult], old_context: dict[str, Any], context: dict[str, Any]
) -> tuple[list[ArmResult], dict[str, Any]]:
    """(previous arms still valid beside `new`, the part's context for all of them)."""
    part = new[0].part
    comparable = part == "learning-curve" and all(old_context.get(k) == context.get(k) for k in SAME_RUN_KEYS)
    sizes = {r.train_rows for r in new}
    still = [r for r in kept if r.part != part or (comparable and r.train_rows not in sizes)]
    if not any(r.part == part for r in still):
        return still, context
    merged = {k: _both(old_context.get(k), context[k]) for k in ("machine", "date")}
    return still, {**context, **merged}


def _both(old: Any, new: Any) -> Any:
    """`old` and `new` as one label ("2026-12-04 and 2026-12-05"), each named once."""
    if old is None:
        return new
    return old if str(new) in str(old).split(" and ") else f"{old} and {new}"


def write_results(
    paths: ProjectPaths, results: list[ArmResult], context: dict[str, Any], out: Path | None = None
) -> list[Path]:
    """Tables, plots, results.json and summary.json under docs/results/ (or `out`); returns the files
    written.

    Running one part keeps the other part's latest arms, so the tables of both stay consistent; each
    part's page names the data, machine and date of the runs that trained its arms. A learning-curve run
    on the same data, model and settings replaces only the sizes it ran, so a long size can be added
    to a curve without running the others again.
    """
    out = out or paths.results_dir
    out.mkdir(parents=True, exist_ok=True)
    previous = _read(paths, out)
    contexts = part_contexts(previous)
    kept = [ArmResult.from_dict(a) for a in previous.get("arms", [])]
    for part in {r.part for r in results}:
        new = [r for r in results if r.part == part]
        kept, contexts[part] = _replace_part(kept, new, contexts[part], context)
    results = kept + results
    record = {"context": context, "contexts": contexts, "arms": [r.to_dict() for r in results]}
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "summary.json").write_text(json.dumps(summary(results, context), indent=2) + "\n")
    written = [out / "results.json", out / "summary.json"]
    if any(r.part == "learning-curve" for r in results):
        (out / "learning_curve.md").write_text(curve_page(results, contexts["learning-curve"]))
        plot_curve(results, contexts["learning-curve"], out / "learning_curve.png")
        written += [out / "learning_curve.md", out / "learning_curve.png"]
    if any(r.part == "strategies" for r in results):
        header = _header(contexts["strategies"])
        (out / "strategies.md").write_text(f"# Strategies\n\n{header}\n{strategy_table(results)}\n")
        plot_strategies(results, out / "strategies.png")
        written += [out / "strategies.md", out / "strategies.png"]
    return written
