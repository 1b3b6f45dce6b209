"""`transferline experiment` end to end on tiny data: real training arms, tables, plots, MLflow run."""

from __future__ import annotations

import json

from tasks.paths import ProjectPaths
from tests.conftest import cli


def test_experiment_writes_tables_plots_and_an_mlflow_run(project, capsys, prefect_server):
    code = cli(
        "experiment", "--project", str(project), "--sizes", "20", "--strategies", "head,lora",
        "--min-steps", "6", "--set", "train.epochs=1", "--set", "data.max_rows=200",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["best_strategy"] in ("head", "lora")
    assert 0.0 <= figures["best_test_accuracy"] <= 1.0
    assert figures["pretrained_minus_scratch_at_500"] is None  # no 500-row arm was asked for

    paths = ProjectPaths.at(project)
    results = json.loads((paths.results_dir / "results.json").read_text())
    arms = {a["name"]: a for a in results["arms"]}
    assert set(arms) == {"pretrained@20", "scratch@20", "head", "lora"}
    assert arms["pretrained@20"]["train_rows"] == 20 and arms["head"]["train_rows"] > 100
    assert arms["pretrained@20"]["epochs"] == 3  # 2 steps an epoch at batch 16: stretched to 6 steps
    assert max(arms["head"]["trainable_params"], arms["lora"]["trainable_params"]) < 200_000
    assert arms["scratch@20"]["trainable_params"] == arms["scratch@20"]["total_params"] > 20_000_000
    for name in ("learning_curve.md", "learning_curve.png", "strategies.md", "strategies.png"):
        assert (paths.results_dir / name).stat().st_size > 0
    assert "| 20 |" in (paths.results_dir / "learning_curve.md").read_text()
    assert "| lora |" in out and "| head |" in out

    from mlflow import MlflowClient

    client = MlflowClient(paths.default_tracking_uri)
    exp = client.get_experiment_by_name("transferline-evidence")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["lora.test_accuracy"] == arms["lora"]["test_accuracy"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"strategies.md", "learning_curve.png", "results.json"} <= logged


def test_experiment_refuses_bad_arguments_before_training(project, capsys):
    assert cli("experiment", "--project", str(project), "--strategies", "head,bogus") == 2
    assert "--strategies: unknown bogus" in capsys.readouterr().err
    assert cli("experiment", "--project", str(project), "--sizes", "100,lots") == 2
    assert cli("experiment", "--project", str(project), "--set", "train.strategy=everything") == 2
    assert "train.strategy" in capsys.readouterr().err
    assert not ProjectPaths.at(project).results_dir.exists()
