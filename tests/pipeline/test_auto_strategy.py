"""`train.strategy: auto` through the whole pipeline: `transferline run --set train.strategy=auto` searches,
trains the chosen configuration, and the version's lineage and model card show every trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.search import candidates
from tests.conftest import cli

pytestmark = pytest.mark.pipeline
# QUICK's ~130 training rows in batches of 4 texts of up to 16 tokens: a trial takes a second or two, so a
# short budget holds several and the test costs the pipeline's own seconds and little more.
BUDGET_S = 15
TINY_TRIALS = ["--set", "train.batch_size=4", "--set", "train.max_length=16"]


def test_auto_chooses_within_its_budget_and_the_lineage_shows_every_trial(
    quick_project: Path, prefect_server, capsys: pytest.CaptureFixture[str]
):
    given = ["--project", str(quick_project)]
    auto = ["--set", "train.strategy=auto", "--set", f"train.time_budget_s={BUDGET_S}"]
    assert cli("run", *given, *auto, *TINY_TRIALS) == 0, capsys.readouterr().err[-3000:]
    capsys.readouterr()

    assert cli("lineage", "1", "--json", *given) == 0
    lineage = json.loads(capsys.readouterr().out)
    trials, chosen = lineage["strategy_search"], lineage["chosen"]
    assert len(trials) >= 3
    assert sum(t["seconds"] for t in trials) <= 1.2 * BUDGET_S
    keys = {"strategy", "settings", "val_accuracy", "val_loss", "seconds", "rows", "round"}
    assert all(keys <= set(t) and t["val_loss"] > 0 for t in trials)
    assert (chosen["strategy"], chosen["settings"]) in [(c.strategy, c.settings) for c in candidates()]
    kept = chosen["kept_trial"]  # the trial that trained the model in full, or None: trained after
    assert kept is None or (trials[kept - 1]["strategy"], trials[kept - 1]["round"]) == (
        chosen["strategy"],
        chosen["round"],
    )
    assert lineage["params"]["train.strategy"] == "auto"
    assert lineage["metrics"]["search_trials"] == len(trials)

    from tasks.paths import ProjectPaths
    from tasks.registry import Registry

    registry = Registry.for_project(ProjectPaths.at(quick_project))
    card = registry.client().get_model_version(lineage["model"], "1").description
    assert "## Strategy search" in card and f"Chosen: `{chosen['strategy']}`" in card
    assert "| validation accuracy | validation loss |" in card
    assert f"strategy `{chosen['strategy']}` (chosen by the search below)" in card

    assert cli("lineage", "1", *given) == 0
    assert f"{chosen['strategy']} at learning rate" in capsys.readouterr().out
