"""The evidence's summary and tables on constructed arm results: the best arm is the best of all arms, and an
arm that does not clear the majority class is said to have learned nothing."""

import json
from pathlib import Path

import pytest

from tasks.config import load_config
from tasks.experiment import SCRATCH_LENGTHS, SCRATCH_RATES, ArmResult
from tasks.experiment_report import curve_table, learned, scratch_grid_table, summary

CONTEXT = {"majority_class_accuracy": 0.5779, "test_rows": 1912}


def arm(name: str, accuracy: float, part: str = "learning-curve", rows: int = 500, **extra) -> ArmResult:
    init = name.split("@")[0] if "@" in name else "pretrained"
    fields = {
        "name": name,
        "part": part,
        "init": init,
        "strategy": name if part == "strategies" else "full",
        "train_rows": rows,
        "epochs": 3,
        "test_accuracy": accuracy,
        "best_val_accuracy": accuracy,
        "train_seconds": 10.0,
        "trainable_params": 100,
        "total_params": 100,
        "settings": {},
    }
    return ArmResult(**{**fields, **extra})


def test_the_best_arm_is_the_best_of_every_arm_not_only_of_the_strategy_table():
    results = [
        arm("pretrained@all", 0.8358, rows=9564, train_seconds=246.0),
        arm("full", 0.8253, part="strategies", rows=9564),
        arm("lora", 0.8201, part="strategies", rows=9564),
    ]
    figures = summary(results, CONTEXT)
    assert (figures["best_strategy"], figures["best_test_accuracy"]) == ("pretrained@all", 0.8358)
    assert figures["best_train_seconds"] == 246.0


def test_summary_gives_the_baselines_at_500_and_2000_rows_and_none_for_sizes_not_run():
    results = [
        arm("pretrained@500", 0.7301),
        arm("scratch@500", 0.5779),
        arm("classical@500", 0.6912),
        arm("scratch@2000", 0.6404, rows=2000),
        arm("classical@2000", 0.7346, rows=2000),
    ]
    figures = summary(results, CONTEXT)
    assert figures == {
        "best_strategy": "classical@2000",
        "best_test_accuracy": 0.7346,
        "best_train_seconds": 10.0,
        "majority_class_accuracy": 0.5779,
        "pretrained_minus_scratch_at_500": 0.1522,
        "scratch_at_2000": 0.6404,
        "classical_at_500": 0.6912,
        "classical_at_2000": 0.7346,
        "pretrained_minus_classical_at_500": 0.0389,
    }
    assert summary([arm("pretrained@100", 0.6, rows=100)], CONTEXT)["classical_at_500"] is None


@pytest.mark.parametrize(
    ("accuracy", "expected"),
    [(0.5779, False), (0.5600, False), (0.5990, False), (0.6010, True), (0.7, True)],
)
def test_learning_means_two_standard_errors_above_the_majority_class(accuracy, expected):
    # standard error at p = 0.5779 on 1,912 rows: 0.0113, so the line lies at 0.6005
    assert learned(accuracy, 0.5779, 1912) is expected


def test_the_curve_table_says_plainly_where_an_arm_learned_nothing():
    results = [
        arm("pretrained@500", 0.7301),
        arm("scratch@500", 0.5779),
        arm("classical@500", 0.6912),
        arm("pretrained@2000", 0.7981, rows=2000),
        arm("scratch@2000", 0.6404, rows=2000),
        arm("classical@2000", 0.7346, rows=2000),
    ]
    table = curve_table(results, CONTEXT)
    assert "| 500 | 0.7301 | 0.5779 (≈ majority) | 0.6912 | +0.1522 | +0.0389 |" in table
    assert "| 2,000 | 0.7981 | 0.6404 | 0.7346 | +0.1577 | +0.0635 |" in table
    assert (
        "The randomly initialised model, with the best setting of its validation grid, does not beat the "
        "majority class at 500 training rows: there it learned nothing usable." in table
    )
    assert "2,000 training rows" not in table.split("does not beat")[1]
    learned_everywhere = [r for r in results if r.name != "scratch@500"]
    assert "Every arm beats the majority class at every size." in curve_table(learned_everywhere, CONTEXT)


def test_the_grid_table_shows_every_cell_and_marks_the_chosen_one():
    grid = [
        {"learning_rate": rate, "epochs": epochs, "val_accuracy": val, "best_epoch": 1, "seconds": 1.0,
         "chosen": chosen}
        for rate, epochs, val, chosen in [
            (1e-4, 3, 0.578, False), (1e-3, 3, None, False), (1e-4, 9, 0.601, False), (1e-3, 9, 0.612, True),
        ]
    ]  # fmt: skip
    table = scratch_grid_table([arm("scratch@500", 0.6, grid=grid, settings={"learning_rate": 1e-3})])
    assert "| 500 | 3 | 0.5780 | diverged |" in table
    assert "| 500 | 9 | 0.6010 | **0.6120** |" in table


def test_results_written_before_the_classical_arm_still_load():
    old = arm("scratch@500", 0.5779).to_dict()
    del old["init"], old["grid"]
    old["pretrained"] = False
    assert ArmResult.from_dict(old).init == "scratch"
    assert ArmResult.from_dict({**old, "pretrained": True}).init == "pretrained"


def test_the_default_scratch_grid_includes_the_pretrained_settings_and_goes_beyond_them():
    # at least 3 rates x 2 lengths; params.yaml's rate at the pretrained arm's length is the first cell,
    # so the tuned arm cannot do worse on validation than the untuned one did
    params = load_config(Path(__file__).resolve().parents[2] / "params.yaml")
    assert len(SCRATCH_RATES) >= 3 and len(SCRATCH_LENGTHS) >= 2
    assert (SCRATCH_RATES[0], SCRATCH_LENGTHS[0]) == (params.train.learning_rate, 1)


def test_a_part_run_alone_keeps_the_other_parts_arms_with_their_own_date_and_machine(tmp_path):
    from tasks.experiment_report import part_contexts, write_results
    from tasks.paths import ProjectPaths

    def context(day: str, machine: str) -> dict:
        base = {"data": "d", "base_model": "m", "metric": "accuracy", "overrides": {}}
        return {**CONTEXT, **base, "machine": machine, "date": day}

    paths, out = ProjectPaths.at(tmp_path), tmp_path / "results"
    strategies = [arm(name, 0.8, part="strategies", rows=9564) for name in ("head", "full")]
    write_results(paths, strategies, context("2026-11-25", "old CPU, 2 cores"), out)
    curve = [arm(f"{init}@500", acc) for init, acc in (("pretrained", 0.73), ("scratch", 0.6))]
    write_results(paths, [*curve, arm("classical@500", 0.66)], context("2026-12-04", "new CPU, 2 cores"), out)

    assert "old CPU, 2 cores; 2026-11-25." in (out / "strategies.md").read_text()
    assert "new CPU, 2 cores; 2026-12-04." in (out / "learning_curve.md").read_text()
    data = json.loads((out / "results.json").read_text())
    assert {a["name"] for a in data["arms"]} == {
        "head",
        "full",
        "pretrained@500",
        "scratch@500",
        "classical@500",
    }
    assert part_contexts(data)["strategies"]["date"] == "2026-11-25"
    assert part_contexts({"context": {"date": "one"}}) == {
        "learning-curve": {"date": "one"},
        "strategies": {"date": "one"},
    }


def test_a_curve_run_of_one_size_replaces_that_size_only_and_a_changed_run_replaces_them_all(tmp_path):
    from tasks.experiment_report import write_results
    from tasks.paths import ProjectPaths

    def context(day: str, data: str = "d") -> dict:
        base = {"data": data, "base_model": "m", "metric": "accuracy", "overrides": {}}
        return {**CONTEXT, **base, "machine": "CPU", "date": day}

    def sized(rows: int, accuracy: float) -> list[ArmResult]:
        return [arm(f"{init}@{rows}", accuracy, rows=rows) for init in ("pretrained", "scratch", "classical")]

    paths, out = ProjectPaths.at(tmp_path), tmp_path / "results"
    write_results(paths, sized(100, 0.6) + sized(1000, 0.7), context("2026-12-04"), out)
    write_results(paths, sized(1000, 0.75) + sized(4500, 0.9), context("2026-12-05"), out)

    data = json.loads((out / "results.json").read_text())
    accuracy = {a["name"]: a["test_accuracy"] for a in data["arms"]}
    assert accuracy["pretrained@100"] == 0.6 and accuracy["pretrained@1000"] == 0.75
    assert accuracy["scratch@4500"] == 0.9 and len(accuracy) == 9
    assert "CPU; 2026-12-04 and 2026-12-05." in (out / "learning_curve.md").read_text()
    write_results(paths, sized(4500, 0.91), context("2026-12-05"), out)  # a date already named: once
    assert "CPU; 2026-12-04 and 2026-12-05." in (out / "learning_curve.md").read_text()

    write_results(paths, sized(4500, 0.8), context("2026-12-06", data="other"), out)
    data = json.loads((out / "results.json").read_text())
    assert {a["train_rows"] for a in data["arms"]} == {4500}
    assert data["contexts"]["learning-curve"]["date"] == "2026-12-06"
