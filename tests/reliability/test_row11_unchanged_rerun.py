"""Row 11: a scheduled run with unchanged data and params is a no-op: no training, no new version, and
nothing the registry or the DVC remote holds changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.ledger import hashes, lost

pytestmark = [pytest.mark.pipeline, pytest.mark.fault(11, "retraining run with unchanged data and params")]


def test_unchanged_rerun_is_a_noop(champion_project: Path, ledger):
    from flows.retrain import retrain
    from tasks.config import load_config
    from tasks.paths import ProjectPaths
    from tasks.registry import Registry

    name = load_config(champion_project / "params.yaml").registry.model_name
    reg = Registry.for_project(ProjectPaths.at(champion_project))
    runs_before = len(
        reg.client().search_runs(experiment_ids=[e.experiment_id for e in reg.client().search_experiments()])
    )
    # Other tests share this session's champion project and may have registered versions of their own.
    versions_before = [v.version for v in reg.list_versions(name)]
    kept = [champion_project.parent / "dvc-remote", champion_project / "mlartifacts"]
    before = hashes(kept)

    again = retrain(project_dir=str(champion_project))

    assert again.version == "1" and again.champion_version == "1"
    assert [v.version for v in reg.list_versions(name)] == versions_before
    assert reg.get_alias(name, "champion").version == "1"
    runs_after = len(
        reg.client().search_runs(experiment_ids=[e.experiment_id for e in reg.client().search_experiments()])
    )
    assert runs_after == runs_before, "an unchanged run logged a new MLflow run"
    after = hashes(kept)
    assert after == before
    ledger.figure(11, data_lost=lost(before, after))
