"""`registry show`, `rollback` and `lineage` (flows/registry_commands.py) against a real MLflow store.

The commands are hosted by flows/cli.py; here they run through a parser built the same way, in-process,
on a tmp project (params.yaml + mlflow.db, the default registry of Registry.for_project).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from flows.registry_commands import restore_commands
from tasks.config import load_config
from tasks.registry import Registry
from tests.conftest import ROOT, cli

MODEL = load_config(ROOT / "params.yaml").registry.model_name
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DATA_HASH = "6ea46d53348e675e87743182f72de908.dir"
SUMMARY_MD = "# Data validation: passed\n\n- 400 rows, 2 labels, no duplicates\n"


def _version_tags(n: int) -> dict[str, str]:
    return {
        "data_hash": DATA_HASH if n == 1 else f"{n:032x}.dir",
        "data_sha256": f"{n:064x}",
        "git_commit": COMMIT if n == 1 else f"{n:040x}-dirty",
        "params_hash": "p" * 64,
        "base_model_id": "sentence-transformers/all-MiniLM-L6-v2",
        "base_model_revision": "c9745ed1d9f207416be6d2e6f8de32d1f16199bf",
        "base_model_sha256": "ab" * 32,
        "prefect_flow_run_id": f"flow-run-{n}",
        "gate": "passed" if n != 3 else "failed",
        "gate_summary": "gate passed: challenger accuracy 0.8300" if n != 3 else "gate failed: accuracy",
        "compared_with_champion": "none" if n == 1 else str(n - 1),
    }


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with 3 versions (cheap: one tiny model folder, no model logging); v1 -> v2 promoted."""
    root = tmp_path_factory.mktemp("registry-commands")
    (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    reg = Registry(f"sqlite:///{root / 'mlflow.db'}", root / "mlartifacts")
    client = reg.client()
    experiment = reg._experiment_id("transferline")
    tiny = root / "tiny"
    tiny.mkdir()
    (tiny / "config.json").write_text("{}")
    reports = root / "reports"
    (reports / "validation").mkdir(parents=True)
    (reports / "validation" / "summary.md").write_text(SUMMARY_MD)
    (reports / "validation" / "result.json").write_text("{}")
    (reports / "gate.md").write_text("# Gate\n")
    client.create_registered_model(MODEL)
    for n in (1, 2, 3):
        run = client.create_run(experiment, tags=_version_tags(n))
        run_id = run.info.run_id
        for key, value in {"train.epochs": 3, "train.learning_rate": 1e-4, "data.max_rows": None}.items():
            client.log_param(run_id, key, str(value))
        client.log_metric(run_id, "test_accuracy", 0.8 + n / 100)
        client.log_metric(run_id, "gate_passed", float(n != 3))
        client.log_artifacts(run_id, str(reports / "validation"), "validation")
        client.log_artifact(run_id, str(reports / "gate.md"))
        client.log_artifacts(run_id, str(tiny), "model")
        client.set_terminated(run_id)
        client.create_model_version(
            MODEL, f"{run.info.artifact_uri}/model", run_id=run_id, tags=_version_tags(n)
        )
        reg.set_challenger(MODEL, str(n), actor="prefect-flow-run:flow-run-" + str(n))
    reg.promote(MODEL, "1", None, actor="prefect-flow-run:flow-run-1", reason="first model")
    reg.promote(MODEL, "2", "1", actor="prefect-flow-run:flow-run-2", reason="beats v1 on test accuracy")
    return root


@pytest.fixture
def project(populated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy: the registry is the project's own mlflow.db (artifacts stay shared, read-only)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    proj = tmp_path / "project"
    proj.mkdir()
    for name in ("params.yaml", "mlflow.db"):
        shutil.copy(populated / name, proj / name)
    return proj


def test_commands_fit_into_the_transferline_parser() -> None:
    from flows.cli import _parser

    parser = _parser()  # the real `transferline` parser carries the registry commands and their handlers
    handlers = parser.parse_args(["params"])._extra_handlers
    assert {"registry", "rollback", "lineage"} <= set(handlers)
    args = parser.parse_args(["rollback", "--to", "3", "--reason", "why", "--project", "/x"])
    assert (args.command, args.to_version, args.reason, args.project) == ("rollback", "3", "why", Path("/x"))
    assert parser.parse_args(["registry", "show", "--json"]).json is True


def test_registry_show_lists_versions_aliases_and_ledger(project: Path, capsys) -> None:
    assert cli("registry", "show", "--project", str(project)) == 0
    out = capsys.readouterr().out
    assert f"model {MODEL}" in out
    assert "champion: v2   challenger: v3   previous: v1" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["version", "aliases", "test_acc"])
    assert lines[header + 1].split()[:5] == ["v1", "previous", "0.8100", "passed", DATA_HASH[:20]]
    assert lines[header + 2].split()[:4] == ["v2", "champion", "0.8200", "passed"]
    assert lines[header + 3].split()[:4] == ["v3", "challenger", "0.8300", "failed"]
    ledger = out[out.index("alias ledger") :]
    assert "prefect-flow-run:flow-run-2  champion    v1 → v2  beats v1 on test accuracy" in ledger
    assert "previous    — → v1" in ledger
    assert ledger.count("challenger") == 3


def test_registry_show_json(project: Path, capsys) -> None:
    assert cli("registry", "show", "--json", "--project", str(project)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["aliases"] == {"champion": "2", "challenger": "3", "previous": "1"}
    assert [v["version"] for v in out["versions"]] == ["1", "2", "3"]
    assert out["versions"][0]["data_hash"] == DATA_HASH and out["versions"][2]["gate"] == "failed"
    assert [(e["alias"], e["from_version"], e["to_version"]) for e in out["ledger"]] == [
        ("challenger", None, "1"),
        ("challenger", "1", "2"),
        ("challenger", "2", "3"),
        ("champion", None, "1"),
        ("champion", "1", "2"),
        ("previous", None, "1"),
    ]


def test_registry_show_on_an_empty_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    assert cli("registry", "show", "--project", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "no versions yet" in out and "no alias moves recorded" in out


def test_rollback_to_previous_then_to_a_named_version(project: Path, capsys) -> None:
    assert cli("rollback", "--project", str(project), "--reason", "v2 mislabels sarcasm") == 0
    out = capsys.readouterr().out
    assert f"rolled back {MODEL}: champion v2 → v1" in out and "previous is now v2" in out
    reg = Registry(f"sqlite:///{project / 'mlflow.db'}", None)
    assert reg.get_alias(MODEL, "champion").version == "1"
    assert reg.get_alias(MODEL, "previous").version == "2"
    last = reg.ledger(MODEL)[-2:]
    assert [(e.alias, e.from_version, e.to_version, e.reason) for e in last] == [
        ("champion", "2", "1", "v2 mislabels sarcasm"),
        ("previous", "1", "2", "v2 mislabels sarcasm"),
    ]

    argv = ["rollback", "--to", "3", "--reason", "try v3", "--actor", "alice", "--project", str(project)]
    assert cli(*argv) == 0
    assert "champion v1 → v3" in capsys.readouterr().out
    assert reg.get_alias(MODEL, "champion").version == "3"
    assert reg.ledger(MODEL)[-1].actor == "alice"

    assert cli("registry", "show", "--project", str(project)) == 0
    assert "alice" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--to", "99", "--reason", "typo"], "has no version 99"),
        (["--to", "2", "--reason", "no-op"], "v2 already is the champion"),
        (["--to", "x", "--reason", "typo"], "must be a number"),
        (["--reason", "  "], "needs a reason"),
    ],
)
def test_rollback_refusals_exit_5_and_move_nothing(project: Path, capsys, argv, fragment) -> None:
    reg = Registry(f"sqlite:///{project / 'mlflow.db'}", None)
    before = reg.ledger(MODEL)
    assert cli("rollback", "--project", str(project), *argv) == 5
    captured = capsys.readouterr()
    assert fragment in captured.err and captured.out == ""
    assert reg.ledger(MODEL) == before
    assert reg.get_alias(MODEL, "champion").version == "2"


def test_rollback_requires_a_reason(project: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli("rollback", "--project", str(project))
    assert exit_.value.code == 2
    assert "--reason" in capsys.readouterr().err


def test_lineage_names_data_code_params_base_model_and_runs(project: Path, capsys) -> None:
    assert cli("lineage", "1", "--project", str(project)) == 0
    out = capsys.readouterr().out
    for fragment in (
        f"{MODEL} v1  [previous]",
        f"data/prepared md5 {DATA_HASH}",
        f"git checkout {COMMIT} -- dvc.lock && dvc checkout data/prepared",
        "dvc pull data/prepared",
        f"printf 'outs:\\n- md5: %s\\n  hash: md5\\n  path: prepared\\n' {DATA_HASH} > restore/prepared.dvc",
        f"git commit         {COMMIT}",
        "sentence-transformers/all-MiniLM-L6-v2 @ c9745ed1d9f207416be6d2e6f8de32d1f16199bf  sha256 abab",
        "train.epochs         3",
        "data.max_rows        None",
        "# Data validation: passed",
        "test accuracy      0.8100",
        "gate               gate passed: challenger accuracy 0.8300",
        "Prefect flow run   flow-run-1",
        "validation/summary.md",
    ):
        assert fragment in out, fragment


def test_lineage_json(project: Path, capsys) -> None:
    assert cli("lineage", "v3", "--json", "--project", str(project)) == 0
    info = json.loads(capsys.readouterr().out)
    run = Registry(f"sqlite:///{project / 'mlflow.db'}", None).get_version(MODEL, "3").run_id
    assert (info["version"], info["mlflow_run_id"], info["prefect_flow_run_id"]) == ("3", run, "flow-run-3")
    assert info["git_commit"] == f"{3:040x}-dirty"
    assert info["dataset"]["data_hash"] == f"{3:032x}.dir"
    assert info["dataset"]["restore"][0].startswith("# the run's working tree was dirty")
    assert info["dataset"]["restore"][1] == f"git checkout {3:040x} -- dvc.lock && dvc checkout data/prepared"
    assert info["params"] == {"data.max_rows": "None", "train.epochs": "3", "train.learning_rate": "0.0001"}
    assert info["base_model"]["revision"] == "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
    assert info["gate"] == {
        "result": "failed",
        "summary": "gate failed: accuracy",
        "compared_with_champion": "2",
        "gate_passed_metric": 0.0,
        "report_artifact": "gate.md",
    }
    assert info["validation"]["summary"] == SUMMARY_MD
    assert info["validation"]["artifacts"] == ["validation/result.json", "validation/summary.md"]
    assert "model/config.json" in info["run_artifacts"]


def test_lineage_of_an_unknown_or_malformed_version(project: Path, capsys) -> None:
    assert cli("lineage", "42", "--project", str(project)) == 5
    assert "has no version 42" in capsys.readouterr().err
    assert cli("lineage", "latest", "--project", str(project)) == 2
    assert "must be a number" in capsys.readouterr().err


def test_restore_commands_without_a_commit() -> None:
    lines = restore_commands("unknown", DATA_HASH)
    assert lines[0] == "# no git commit recorded: restore by hash"
    assert not any(line.startswith("git checkout") for line in lines)
    assert restore_commands(COMMIT, None) == ["# cannot derive: the version has no data_hash tag"]


@pytest.mark.parametrize("command", [["registry", "show"], ["rollback", "--reason", "x"], ["lineage", "1"]])
def test_bad_params_yaml_exits_2(project: Path, capsys, command) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["registry"]["model_name"] = "bad name!"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli(*command, "--project", str(project)) == 2
    assert "registry.model_name" in capsys.readouterr().err


def test_unreachable_registry_exits_5(project: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/no-such-dir/mlflow.db")
    assert cli("registry", "show", "--project", str(project)) == 5
    assert "/proc/no-such-dir/mlflow.db" in capsys.readouterr().err


def test_registry_show_reads_legacy_tag_entries_with_the_ledger_runs(project: Path, capsys) -> None:
    """A registry written before the ledger experiment holds its moves as `ledger.*` model tags: `registry
    show` lists them with the new entries, in time order, and a new move adds no tag."""
    reg = Registry(f"sqlite:///{project / 'mlflow.db'}", None)
    client = reg.client()
    first_ms = int(reg.ledger(MODEL)[0].key.split(".")[1])
    legacy = {
        "at": "2026-01-05T02:00:00.000+00:00",
        "actor": "cron@old-host",
        "alias": "champion",
        "from_version": None,
        "to_version": "1",
        "reason": "legacy move",
        "gate": None,
        "approval": None,
    }
    key = f"ledger.{first_ms - 86_400_000:015d}.0badc0de"  # a day before the registry's first run entry
    client.set_registered_model_tag(MODEL, key, json.dumps(legacy))
    assert cli("rollback", "--reason", "after the upgrade", "--project", str(project)) == 0
    capsys.readouterr()

    assert cli("registry", "show", "--json", "--project", str(project)) == 0
    ledger = json.loads(capsys.readouterr().out)["ledger"]
    assert (ledger[0]["key"], ledger[0]["actor"], ledger[0]["reason"]) == (
        key,
        "cron@old-host",
        "legacy move",
    )
    assert [e["reason"] for e in ledger[-2:]] == ["after the upgrade"] * 2
    assert [e["key"] for e in ledger] == sorted(e["key"] for e in ledger) and len(ledger) == 9
    assert cli("registry", "show", "--project", str(project)) == 0
    table = capsys.readouterr().out
    assert (
        table.index("legacy move")
        < table.index("beats v1 on test accuracy")
        < table.index("after the upgrade")
    )
    assert f"experiment '{MODEL}-ledger'" in table
    assert [k for k in client.get_registered_model(MODEL).tags if k.startswith("ledger.")] == [key]


def test_every_registry_command_reads_the_settings_with_set(project: Path, capsys) -> None:
    other = ["--set", "registry.model_name=another-model", "--project", str(project)]
    assert cli("registry", "show", "--json", *other) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["model"], shown["versions"], shown["ledger"]) == ("another-model", [], [])
    assert cli("lineage", "1", *other) == 5
    assert "another-model has no version 1" in capsys.readouterr().err
    assert cli("rollback", "--reason", "x", *other) == 5
    assert "no registered model 'another-model'" in capsys.readouterr().err
    assert cli("registry", "show", "--set", "registry.model_nam=x", "--project", str(project)) == 2
    assert "did you mean 'model_name'" in capsys.readouterr().err
