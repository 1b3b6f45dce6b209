"""The retrain deployment's run form offers `auto` and its time budget, typed as params.yaml bounds them."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT


def test_the_deployed_run_form_offers_auto_and_a_typed_time_budget():
    from prefect import flow

    from flows.deployments import CODE_ROOT, DEPLOYMENTS
    from flows.retrain import run_overrides
    from tasks.config import ConfigError, load_config

    (spec,) = [s for s in DEPLOYMENTS if s.entrypoint.endswith(":retrain")]
    # The schema `transferline up` sends with the deployment: the flow as loaded from its entry point.
    form = flow.from_source(source=str(CODE_ROOT), entrypoint=spec.entrypoint).parameters.properties
    strategy, budget = form["strategy"]["anyOf"][0], form["time_budget_s"]["anyOf"][0]
    assert "auto" in strategy["enum"]
    assert budget == {"type": "number", "exclusiveMinimum": 0, "maximum": 7 * 24 * 3600}
    assert form["time_budget_s"]["default"] is None  # empty: params.yaml's value
    assert "train.time_budget_s" in form["time_budget_s"]["description"]

    chosen = run_overrides(None, strategy="auto", time_budget_s=90.0)
    cfg = load_config(ROOT / "params.yaml", chosen)
    assert (cfg.train.strategy, cfg.train.time_budget_s) == ("auto", 90.0)
    with pytest.raises(ConfigError, match=r"train\.time_budget_s"):
        load_config(ROOT / "params.yaml", run_overrides(None, strategy="auto", time_budget_s=0.0))
