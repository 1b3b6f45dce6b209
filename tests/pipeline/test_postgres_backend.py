"""The whole retraining flow with MLflow's tracking and registry store on a real PostgreSQL server.

The production set-up (infra/docker-compose.yml) keeps MLflow on PostgreSQL, whose schema enforces
limits SQLite ignores (e.g. VARCHAR(5000) tag values, which the alias ledger and the lineage tags must
respect). The server is started here from Debian's binaries; if it cannot start, the test fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import pgserver
from tests.conftest import cli

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def postgres():
    try:
        server = pgserver.start()
    except pgserver.PostgresUnavailable as err:
        pytest.fail(f"PostgreSQL could not be started for the integration test: {err}", pytrace=False)
    yield server
    server.stop()


def test_retrain_flow_on_a_postgresql_tracking_and_registry_store(
    bare_project: Path, prefect_server, postgres, monkeypatch, capsys
):
    project = bare_project
    import psycopg

    from flows.retrain import retrain

    uri = postgres.createdb("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    summary = retrain(project_dir=str(project))
    assert summary.promoted and summary.version == "1"
    assert not (project / "mlflow.db").exists()  # nothing went to the SQLite default

    # What MLflow wrote is in PostgreSQL's tables: the run, the version, its aliases, its lineage tags.
    with psycopg.connect(uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM registered_models")
        (name,) = cur.fetchone()
        cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", (name,))
        assert dict(cur.fetchall()) == {"champion": 1, "challenger": 1}
        cur.execute("SELECT key, value FROM model_version_tags WHERE name = %s AND version = 1", (name,))
        tags = dict(cur.fetchall())
        runs_of = "SELECT r.status FROM runs r JOIN experiments e USING (experiment_id) WHERE e.name = %s"
        cur.execute(runs_of, ("transferline",))
        assert [s for (s,) in cur.fetchall()] == ["FINISHED"]
        cur.execute(runs_of, (f"{name}-ledger",))  # one run per alias move
        assert len(cur.fetchall()) >= 2  # challenger and champion moves, recorded in the ledger
    assert tags["run_key"] and len(tags["weights_sha256"]) == 64 and tags["gate"] == "passed"

    # The CLI reads the same store through MLFLOW_TRACKING_URI.
    assert cli("registry", "show", "--project", str(project), "--json") == 0
    assert '"version": "1"' in capsys.readouterr().out
