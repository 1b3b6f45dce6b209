"""Row 8: the gate refuses what it must: a worse challenger, a NaN metric, and it says when there was no
champion to compare with (the first-model rule).

- no champion: the first run of a fresh project is promoted under the explicit first-model rule (floor and
  budgets only), and its gate report says so;
- a worse challenger (trained with a learning rate too small to learn) is registered as `challenger` with
  `gate=failed`; `champion` stays;
- NaN: a model whose outputs are NaN (its real classifier weights poisoned) scores accuracy NaN through
  the real evaluation code, and the gate refuses it, as it refuses a champion whose metric is NaN;
  a training run whose loss becomes NaN stops before anything is saved.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_project
from tests.pipeline.test_retrain_flow import model_name, registry

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Path:
    """A fresh project (no champion) after its first run."""
    from flows.retrain import retrain

    project = make_project(tmp_path_factory.mktemp("gate"))
    first = retrain(project_dir=str(project))
    assert first.promoted and first.version == "1" and first.champion_version is None
    return project


@pytest.mark.fault(8, "no champion yet: the first-model rule decides")
def test_first_model_rule_is_explicit(gated: Path):
    report = (gated / "reports" / "gate.md").read_text()
    assert "first-model rule" in report and "no champion yet" in report
    decision = json.loads((gated / "reports" / "gate.json").read_text())
    assert decision["passed"] and decision["first_model"]
    assert registry(gated).get_version(model_name(gated), "1").tags["gate"] == "passed"


def test_worse_challenger_is_not_promoted(gated: Path, ledger):
    from flows.retrain import retrain
    from tasks.gate import GateRejected

    reg, name = registry(gated), model_name(gated)
    with ledger.fault(8, "challenger worse than the champion"):
        with pytest.raises(GateRejected, match="'champion' stays on v1"):
            retrain(project_dir=str(gated), overrides={"train.learning_rate": 1e-8})
        challenger = reg.get_alias(name, "challenger")
        assert challenger.version == "2" and challenger.tags["gate"] == "failed"
        assert challenger.metrics["test_accuracy"] < challenger.metrics["champion_test_accuracy"]
        wrongful = int(reg.get_alias(name, "champion").version != "1")
        ledger.figure(8, wrongful_promotions=wrongful)
        assert wrongful == 0


def test_nan_outputs_give_a_nan_metric_and_the_gate_refuses_it(gated: Path, tmp_path: Path, ledger):
    from safetensors.torch import load_file, save_file

    from tasks.config import load_config
    from tasks.evaluate import score
    from tasks.gate import decide
    from tasks.inference import Predictor

    cfg = load_config(gated / "params.yaml")
    test = pd.read_parquet(gated / "data" / "prepared" / "test.parquet")
    champion_dir = registry(gated).download_model_dir(model_name(gated), "1", tmp_path / "champion")
    champion = score(Predictor(champion_dir, cfg.train.max_length), test, cfg, "champion")
    poisoned = tmp_path / "poisoned"
    shutil.copytree(champion_dir, poisoned)
    weights = load_file(poisoned / "model.safetensors")
    weights["classifier.weight"][0, 0] = float("nan")
    save_file(weights, poisoned / "model.safetensors", metadata={"format": "pt"})

    with ledger.fault(8, "a model whose outputs are NaN"):
        nan = score(Predictor(poisoned, cfg.train.max_length), test, cfg, "challenger")
        assert math.isnan(nan.accuracy)  # argmax would have made NaN logits look like class 0
        refused = decide(nan, champion, cfg.gate, champion_version="1")
        assert not refused.passed
        metric = next(c for c in refused.checks if c.name == "metric present")
        assert not metric.passed and "nan" in metric.detail
    with ledger.fault(8, "a champion whose metric is NaN"):
        blind = decide(champion, nan, cfg.gate, champion_version="1")
        assert not blind.passed and "never promote blindly" in blind.summary() + str(blind.checks)


@pytest.mark.fault(8, "training loss becomes NaN")
def test_training_whose_loss_becomes_nan_stops_before_saving(gated: Path, tmp_path: Path):
    from safetensors.torch import load_file, save_file

    from tasks.config import load_config
    from tasks.download import load_base_ref
    from tasks.paths import ProjectPaths
    from tasks.train import TrainingDiverged, fine_tune

    cfg = load_config(gated / "params.yaml")
    base = tmp_path / "base"
    shutil.copytree(load_base_ref(ProjectPaths.at(gated)).path, base)
    weights = load_file(base / "model.safetensors")
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[key][:] = float("nan")  # as a bad update would leave them
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    train = pd.read_parquet(gated / "data" / "prepared" / "train.parquet").head(64)
    checkpoints = tmp_path / "checkpoints"
    diverged = r"training loss became nan at epoch \d+, step \d+: lower train\.learning_rate"
    with pytest.raises(TrainingDiverged, match=diverged):
        fine_tune(base, train, train, cfg.data.labels, cfg.train, checkpoint_dir=checkpoints)
    assert not any(checkpoints.rglob("*.safetensors")), "a diverged run left weights behind"
