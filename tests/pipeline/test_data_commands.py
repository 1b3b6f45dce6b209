"""`data status` and `data diff` (flows/data_commands.py) on a real git+DVC project and a real MLflow store.

Two dataset versions come from `dvc repro prepare` with two values of data.max_rows; the expected diff is
computed independently from the parquet files each version wrote. The commands run in-process through a
parser built the way flows/cli.py builds it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.data_commands import add_commands
from tasks.paths import SPLITS, ProjectPaths
from tasks.registry import Registry
from tests.conftest import cli, run, set_params


def repro_prepare(project: Path) -> str:
    result = run([sys.executable, "-m", "dvc", "repro", "--quiet", "prepare"], project)
    assert result.returncode == 0, result.stderr
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")


def keyed(folder: Path) -> dict[str, dict[str, str]]:
    """split -> {normalised text: label}, straight from the parquet files."""
    out = {}
    for split in SPLITS:
        frame = pd.read_parquet(folder / f"{split}.parquet")
        out[split] = {
            " ".join(t.lower().split()): label for t, label in zip(frame.text, frame.label, strict=True)
        }
    return out


def expected_counts(a: dict[str, str], b: dict[str, str]) -> dict[str, int]:
    shared = a.keys() & b.keys()
    changed = sum(a[k] != b[k] for k in shared)
    return {
        "rows_a": len(a),
        "rows_b": len(b),
        "added": len(b.keys() - a.keys()),
        "removed": len(a.keys() - b.keys()),
        "changed": changed,
        "unchanged": len(shared) - changed,
    }


def test_parser_shape() -> None:
    parser = argparse.ArgumentParser(prog="transferline")
    sub = parser.add_subparsers(dest="command", required=True)
    assert set(add_commands(sub)) == {"data"}
    args = parser.parse_args(["data", "diff", "abc", "current", "--json", "--project", "/x"])
    assert (args.data_command, args.a, args.b, args.json, args.project) == (
        "diff",
        "abc",
        "current",
        True,
        Path("/x"),
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["data"])  # a subcommand is required


def test_data_status_and_diff_between_two_prepared_versions(
    bare_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = bare_project
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    proj = ["--project", str(project)]

    # Before any prepare: nothing recorded, and `current` is bad input.
    assert cli("data", "status", *proj) == 0
    out = capsys.readouterr().out
    assert "none recorded in dvc.lock" in out and "no manifest" in out and "no champion yet" in out
    assert cli("data", "diff", "current", "current", *proj) == 2
    assert "run `dvc repro prepare` first" in capsys.readouterr().err

    # Version A: the tiny params (data.max_rows 400).
    version_a = repro_prepare(project)
    snapshot_a = tmp_path / "snapshot-a"
    shutil.copytree(project / "data" / "prepared", snapshot_a)
    manifest_a = json.loads((snapshot_a / "manifest.json").read_text())

    assert cli("data", "status", "--json", *proj) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["version"] == version_a and version_a.endswith(".dir")
    assert status["rows"] == manifest_a["rows"] and sum(status["rows"].values()) == 400
    assert status["labels"] == manifest_a["labels"]
    assert status["source"] == "sample://rotten-tomatoes"
    assert status["workspace"] == "matches dvc.lock"
    assert status["champion"] is None and status["differs_from_champion"] is None
    assert not (project / "mlflow.db").exists()  # status does not create a registry

    assert cli("data", "status", *proj) == 0
    out = capsys.readouterr().out
    assert ["version", version_a] in [line.split() for line in out.splitlines()]
    assert "no champion yet (transferline-sentiment)" in out
    train_row = next(line.split() for line in out.splitlines() if line.strip().startswith("train"))
    labels = sorted(manifest_a["labels"]["train"])
    assert train_row == [
        "train",
        f"{manifest_a['rows']['train']:,}",
        *(f"{manifest_a['labels']['train'][x]:,}" for x in labels),
    ]

    # Version B: more rows (and so a different stratified subsample and split).
    set_params(project, {"data.max_rows": 600})
    version_b = repro_prepare(project)
    assert version_b != version_a

    assert cli("data", "diff", version_a, version_b.removesuffix(".dir"), "--json", *proj) == 0
    diff = json.loads(capsys.readouterr().out)
    rows_a, rows_b = keyed(snapshot_a), keyed(project / "data" / "prepared")
    assert diff["a"]["version"] == version_a and diff["b"]["version"] == version_b
    for split in SPLITS:
        assert diff["splits"][split] == expected_counts(rows_a[split], rows_b[split]), split
    all_a = {k: v for split in SPLITS for k, v in rows_a[split].items()}
    all_b = {k: v for split in SPLITS for k, v in rows_b[split].items()}
    total = expected_counts(all_a, all_b)
    assert {k: diff["total"][k] for k in total} == total
    assert total["rows_a"] == 400 and total["rows_b"] == 600
    assert total["added"] >= 200 and total["changed"] == 0  # a review keeps its label across versions

    # `current` is B; a unique prefix names A; the table shows the same numbers.
    assert cli("data", "diff", version_a[:10], "current", *proj) == 0
    out = capsys.readouterr().out
    assert f"B = current ({version_b})" in out
    total_row = next(line.split() for line in out.splitlines() if line.strip().startswith("total"))
    assert total_row == ["total", *(f"{total[k]:,}" for k in expected_counts({}, {}))]

    # Unknown versions: bad input (exit 2) with what to do.
    missing = "0123456789abcdef0123456789abcdef"
    assert cli("data", "diff", missing, "current", *proj) == 2
    err = capsys.readouterr().err
    assert f"dataset version {missing!r}" in err and "not in the local DVC cache" in err and "dvc pull" in err
    assert cli("data", "diff", "yesterday", "current", *proj) == 2
    assert "unknown dataset version 'yesterday'" in capsys.readouterr().err
    assert cli("data", "diff", "champion", "current", *proj) == 2
    assert "no champion yet" in capsys.readouterr().err

    # A champion trained on version A: status says the current snapshot (B) differs; `champion` resolves.
    registry = Registry.for_project(ProjectPaths.at(project))
    client = registry.client()
    model = "transferline-sentiment"
    run_ = client.create_run(registry._experiment_id("transferline"))
    weights = tmp_path / "tiny"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    client.log_artifacts(run_.info.run_id, str(weights), "model")
    client.create_registered_model(model)
    tags = {"data_hash": version_a, "data_source": "sample://rotten-tomatoes"}
    client.create_model_version(model, f"{run_.info.artifact_uri}/model", run_id=run_.info.run_id, tags=tags)
    client.set_registered_model_alias(model, "champion", "1")

    assert cli("data", "status", "--json", *proj) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["champion"] == {
        "version": "1",
        "data_hash": version_a,
        "data_source": "sample://rotten-tomatoes",
    }
    assert status["version"] == version_b and status["differs_from_champion"] is True
    assert cli("data", "status", *proj) == 0
    out = capsys.readouterr().out
    assert f"transferline-sentiment v1 trained on {version_a}" in out
    assert "the current snapshot differs from the champion's dataset" in out
    assert cli("data", "diff", "champion", "current", "--json", *proj) == 0
    assert json.loads(capsys.readouterr().out)["total"] == diff["total"]

    # Registry unavailable: exit 5.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/no-such-dir/mlflow.db")
    assert cli("data", "status", *proj) == 5
    assert "/proc/no-such-dir/mlflow.db" in capsys.readouterr().err


def test_bad_params_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("data", "status", "--project", str(tmp_path)) == 2
    assert "no such params file" in capsys.readouterr().err
    assert cli("data", "diff", "current", "champion", "--project", str(tmp_path)) == 2
    assert "no such params file" in capsys.readouterr().err


def test_a_moved_dvc_cache_is_read_where_dvc_config_puts_it(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dvc config cache.dir` moves the cache (here relative to the project, as a user would type it):
    the DVC adapter finds it through DVC's own config, and the data commands read the versions there."""
    from tasks.versioning import cache_dir, cache_object

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    moved = project.parent / "moved-dvc-cache"
    result = run([sys.executable, "-m", "dvc", "config", "cache.dir", "../moved-dvc-cache"], project)
    assert result.returncode == 0, result.stderr
    version = repro_prepare(project)

    paths = ProjectPaths.at(project)
    assert cache_dir(paths) == moved.resolve()
    listing = cache_object(paths, version)
    assert listing == moved.resolve() / "files" / "md5" / version[:2] / version[2:] and listing.is_file()
    assert not (project / ".dvc" / "cache" / "files").exists()  # nothing went to the default place

    proj = ["--project", str(project)]
    assert cli("data", "status", "--json", *proj) == 0
    assert json.loads(capsys.readouterr().out)["workspace"] == "matches dvc.lock"  # read from the listing
    assert (
        cli("data", "diff", version[:8], "current", "--json", *proj) == 0
    )  # prefix found in the moved cache
    diff = json.loads(capsys.readouterr().out)
    assert diff["identical"] and diff["total"]["unchanged"] == diff["total"]["rows_a"] == 400

    assert cli("data", "diff", "0123456789abcdef0123456789abcdef", "current", *proj) == 2
    assert str(moved.resolve()) in capsys.readouterr().err  # the message names the cache actually used
