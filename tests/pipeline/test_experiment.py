"""`transferline experiment` end to end on tiny data: real training arms, tables, plots, MLflow run."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from tasks.classical import C_GRID
from tasks.paths import ProjectPaths
from tasks.prepare import read_split
from tests.conftest import cli, run


def test_experiment_writes_tables_plots_and_an_mlflow_run(project, capsys, prefect_server):
    code = cli(
        "experiment", "--project", str(project), "--sizes", "20", "--strategies", "head,lora",
        "--min-steps", "6", "--set", "train.epochs=1", "--set", "data.max_rows=200",
        "--scratch-rates", "1e-3", "--scratch-lengths", "1,2",  # a small grid: 2 runs of 3 or 6 epochs
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    figures = json.loads(out.strip().splitlines()[-1])
    paths = ProjectPaths.at(project)
    results = json.loads((paths.results_dir / "results.json").read_text())
    arms = {a["name"]: a for a in results["arms"]}
    assert set(arms) == {"pretrained@20", "scratch@20", "classical@20", "head", "lora"}
    best = max(arms.values(), key=lambda a: a["test_accuracy"])  # of every arm, not only the strategies
    assert figures["best_strategy"] == best["name"]
    assert figures["best_test_accuracy"] == round(best["test_accuracy"], 4)
    assert 0.0 <= figures["best_test_accuracy"] <= 1.0
    assert figures["pretrained_minus_scratch_at_500"] is None  # no 500-row arm was asked for
    for key in (
        "scratch_at_2000",
        "classical_at_500",
        "classical_at_2000",
        "pretrained_minus_classical_at_500",
    ):
        assert figures[key] is None
    train, test = read_split(paths, "train"), read_split(paths, "test")
    majority = (test["label"] == train["label"].value_counts().idxmax()).mean()
    assert 0.5 <= figures["majority_class_accuracy"] == round(majority, 4) < 1.0
    assert json.loads((paths.results_dir / "summary.json").read_text()) == figures

    assert arms["pretrained@20"]["train_rows"] == 20 and arms["head"]["train_rows"] > 100
    assert arms["pretrained@20"]["epochs"] == 3  # 2 steps an epoch at batch 16: stretched to 6 steps
    assert max(arms["head"]["trainable_params"], arms["lora"]["trainable_params"]) < 200_000
    assert arms["scratch@20"]["trainable_params"] == arms["scratch@20"]["total_params"] > 20_000_000
    # the scratch arm: one run per (rate, length) of the grid; the best on validation is the arm
    scratch = arms["scratch@20"]
    cells = {(c["learning_rate"], c["epochs"]): c for c in scratch["grid"]}
    assert set(cells) == {(1e-3, 3), (1e-3, 6)}
    (chosen,) = [c for c in scratch["grid"] if c["chosen"]]
    assert chosen["val_accuracy"] == max(
        c["val_accuracy"] for c in cells.values() if c["val_accuracy"] is not None
    )
    assert (scratch["settings"]["learning_rate"], scratch["epochs"]) == (
        chosen["learning_rate"],
        chosen["epochs"],
    )
    assert scratch["best_val_accuracy"] == chosen["val_accuracy"]
    # the classical arm: TF-IDF + logistic regression, C chosen on validation
    classical = arms["classical@20"]
    assert [c["C"] for c in classical["grid"]] == list(C_GRID)
    (chosen,) = [c for c in classical["grid"] if c["chosen"]]
    assert (
        chosen["val_accuracy"]
        == max(c["val_accuracy"] for c in classical["grid"])
        == classical["best_val_accuracy"]
    )
    assert classical["settings"] == {"C": chosen["C"]} and classical["train_rows"] == 20
    assert 0 < classical["trainable_params"] == classical["total_params"] < 5_000  # a 20-text vocabulary
    for name in ("learning_curve.md", "learning_curve.png", "strategies.md", "strategies.png"):
        assert (paths.results_dir / name).stat().st_size > 0
    curve = (paths.results_dir / "learning_curve.md").read_text()
    assert "| 20 |" in curve
    assert f"Majority class (always the training split's most common label): {majority:.4f}." in curve
    assert "## The scratch grid" in curve and "**" in curve.split("## The scratch grid")[1]
    assert "| lora |" in out and "| head |" in out

    from mlflow import MlflowClient

    client = MlflowClient(paths.default_tracking_uri)
    exp = client.get_experiment_by_name("transferline-evidence")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["lora.test_accuracy"] == arms["lora"]["test_accuracy"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"strategies.md", "learning_curve.png", "results.json", "summary.json"} <= logged
    assert run.data.metrics["classical_20.test_accuracy"] == classical["test_accuracy"]  # MLflow has no "@"
    assert (run.data.params["scratch_rates"], run.data.params["scratch_lengths"]) == ("0.001", "1,2")


def test_experiment_refuses_bad_arguments_before_training(project, capsys):
    assert cli("experiment", "--project", str(project), "--strategies", "head,bogus") == 2
    assert "--strategies: unknown bogus" in capsys.readouterr().err
    assert cli("experiment", "--project", str(project), "--sizes", "100,lots") == 2
    assert cli("experiment", "--project", str(project), "--scratch-rates", "1e-4,0") == 2
    assert "--scratch-rates" in capsys.readouterr().err
    assert cli("experiment", "--project", str(project), "--scratch-lengths", "0") == 2
    assert "--scratch-lengths" in capsys.readouterr().err
    assert cli("experiment", "--project", str(project), "--set", "train.strategy=everything") == 2
    assert "train.strategy" in capsys.readouterr().err
    assert not ProjectPaths.at(project).results_dir.exists()


def small_evidence(
    project: Path, capsys: pytest.CaptureFixture[str], size: int, rates: str, lengths: str, output: str
) -> tuple[dict, Path]:
    """`transferline experiment` at one size with the head strategy and a small scratch grid, under
    `output`; (its last line's figures, the results folder)."""
    code = cli(
        "experiment", "--project", str(project), "--sizes", str(size), "--strategies", "head",
        "--min-steps", "4", "--set", "train.epochs=1", "--scratch-rates", rates,
        "--scratch-lengths", lengths, "--output", output,
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1]), project / output


def test_the_evidence_of_an_image_project(tmp_path, capsys, prefect_server):
    """`transferline experiment` on an image project (lfw_subset, EfficientNet-Lite0 at 32 pixels): the
    pretrained model, the same architecture from random init (rate and length chosen on validation, 2 × 2
    runs here; the evidence's command uses 3 × 2) and a logistic regression on pixels (C on validation), and
    the strategy table, under --output."""
    from tasks.classical import PIXEL_C_GRID, PIXEL_SIDE, PIXELS_NAME
    from tests.conftest import make_project
    from tests.data.images import lfw_folder
    from tests.pipeline.test_image_pipeline import IMAGE_PARAMS

    project = make_project(tmp_path, {**IMAGE_PARAMS, "data.val_size": 0.2, "train.batch_size": 8})
    lfw_folder(project / "data" / "raw" / "lfw", per_class=20)
    figures, results_dir = small_evidence(project, capsys, 12, "1e-3,1e-2", "1,2", "docs/results/images")
    assert json.loads((results_dir / "summary.json").read_text()) == figures
    assert not (project / "docs" / "results" / "results.json").exists()  # only under --output
    arms = {a["name"]: a for a in json.loads((results_dir / "results.json").read_text())["arms"]}
    assert set(arms) == {"pretrained@12", "scratch@12", "classical@12", "head"}
    assert arms["pretrained@12"]["train_rows"] == 12 and arms["head"]["train_rows"] > 12
    scratch = arms["scratch@12"]
    assert {(c["learning_rate"], c["epochs"]) for c in scratch["grid"]} == {
        (rate, epochs) for rate in (1e-3, 1e-2) for epochs in (2, 4)
    }
    assert scratch["trainable_params"] == scratch["total_params"] > 3_000_000  # EfficientNet-Lite0, all of it
    classical = arms["classical@12"]
    assert classical["strategy"] == PIXELS_NAME and [c["C"] for c in classical["grid"]] == list(PIXEL_C_GRID)
    assert classical["trainable_params"] == PIXEL_SIDE * PIXEL_SIDE * 3 + 1
    assert arms["head"]["trainable_params"] < 10_000  # a linear probe on 1,280 pooled features
    curve = (results_dir / "learning_curve.md").read_text()
    assert f"logistic regression on {PIXEL_SIDE}×{PIXEL_SIDE} pixels" in curve and "TF-IDF" not in curve
    assert "| 12 |" in curve and "| head |" in (results_dir / "strategies.md").read_text()
    assert (results_dir / "learning_curve.png").stat().st_size > 0


def test_the_evidence_of_a_token_project(tmp_path, capsys, prefect_server):
    """`transferline experiment` on a tagger (synthetic sentences): every arm is scored by entity F1, the
    classical arm is a CRF with its (c1, c2) chosen on validation, and the floor is the F1 of always `O`."""
    from tasks.classical import CRF_NAME
    from tasks.kinds.token_crf import GRID
    from tests.conftest import make_project
    from tests.data.sentences import corpus, write_conll
    from tests.pipeline.test_token_pipeline import NER_PARAMS

    project = make_project(tmp_path, {**NER_PARAMS, "train.batch_size": 8, "train.learning_rate": 1e-3})
    write_conll(project / "data" / "raw" / "ner.txt", corpus(100))
    figures, results_dir = small_evidence(project, capsys, 24, "1e-3", "1", "docs/results/ner")
    results = json.loads((results_dir / "results.json").read_text())
    assert results["context"]["metric"] == "entity F1" and figures["majority_class_accuracy"] == 0.0
    arms = {a["name"]: a for a in results["arms"]}
    assert set(arms) == {"pretrained@24", "scratch@24", "classical@24", "head"}
    assert all(a["metric"] == "entity F1" and 0.0 <= a["test_accuracy"] <= 1.0 for a in arms.values())
    classical = arms["classical@24"]
    assert classical["strategy"] == CRF_NAME and [(c["c1"], c["c2"]) for c in classical["grid"]] == list(GRID)
    chosen = next(c for c in classical["grid"] if c["chosen"])
    assert classical["settings"] == {"c1": chosen["c1"], "c2": chosen["c2"]}
    assert classical["test_accuracy"] > 0.5  # the synthetic entities are easy for a CRF
    curve = (results_dir / "learning_curve.md").read_text()
    assert "CRF on hand-made word features" in curve and "test entity F1" in curve
    assert "Always the most common tag (`O`: no entity found), test entity F1: 0.0000" in curve
    assert "| head |" in (results_dir / "strategies.md").read_text()


def test_a_stopped_experiment_resumes_from_the_arms_it_finished(
    project, prefect_server, caplog: pytest.LogCaptureFixture
):
    """The process dies (no clean-up) right after recording its first arm; the same command again (here
    in the test's process) takes that arm from the record instead of training it, trains the rest, and
    deletes the record."""
    command = [
        "experiment", "learning-curve", "--project", str(project), "--sizes", "20", "--min-steps", "2",
        "--set", "train.epochs=1", "--set", "data.max_rows=200", "--scratch-rates", "1e-3",
        "--scratch-lengths", "1",
    ]  # fmt: skip
    results_dir = ProjectPaths.at(project).results_dir
    faulty = {**os.environ, "TRANSFERLINE_FAULT": "experiment.arm_recorded"}
    crashed = run([sys.executable, "-m", "flows.cli", *command], project, faulty)
    assert crashed.returncode == 137, crashed.stderr[-3000:]
    record = json.loads((results_dir / ".progress.json").read_text())
    assert [a["name"] for a in record["arms"]] == ["pretrained@20"]
    assert not (results_dir / "results.json").exists()  # the tables come at the end only

    with caplog.at_level(logging.INFO, logger="transferline"):
        assert cli(*command) == 0
    log = caplog.text
    assert "resuming: 1 arm(s) finished by an earlier run" in log
    assert "arm pretrained@20: 20 training rows" not in log and "arm scratch@20: 20 training rows" in log
    arms = {a["name"]: a for a in json.loads((results_dir / "results.json").read_text())["arms"]}
    assert set(arms) == {"pretrained@20", "scratch@20", "classical@20"}
    assert arms["pretrained@20"] == record["arms"][0]  # taken as recorded, seconds and all
    assert not (results_dir / ".progress.json").exists()
