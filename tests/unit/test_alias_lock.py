"""Which service holds the alias lock for which registry (tasks/alias_lock.py), and the names it uses.

The locks themselves are exercised for real elsewhere: the SQLite file lock by two processes racing
(tests/reliability/test_row10_promotion_race.py), the PostgreSQL advisory lock and the Prefect global
concurrency limit by two project checkouts racing through a tracking server
(tests/reliability/test_row10_17_cross_checkout_races.py).
"""

from __future__ import annotations

import pytest

from tasks import alias_lock
from tasks.alias_lock import FILE, POSTGRESQL, PREFECT, PROCESS, service_for

PREFECT_URL = "http://prefect:4200/api"


def no_prefect() -> str | None:
    return None


def with_prefect() -> str | None:
    return PREFECT_URL


@pytest.mark.parametrize(
    ("uri", "prefect", "kind", "shared"),
    [
        ("sqlite:////srv/project/mlflow.db", with_prefect, FILE, True),
        ("postgresql://mlflow:secret@db:5432/mlflow", no_prefect, POSTGRESQL, True),
        ("postgresql+psycopg2://mlflow:secret@db/mlflow", with_prefect, POSTGRESQL, True),
        ("http://mlflow:5000", with_prefect, PREFECT, True),
        ("https://mlflow.example.com", with_prefect, PREFECT, True),
        ("http://mlflow:5000", no_prefect, PROCESS, False),
        ("databricks", with_prefect, PROCESS, False),
    ],
)
def test_the_lock_service_follows_the_registry(uri, prefect, kind, shared):
    service = service_for(uri, "sentiment", prefect)
    assert (service.kind, service.shared) == (kind, shared)
    assert "secret" not in repr(service.to_dict())  # printed by `transferline status`


def test_an_unshared_lock_says_so_and_how_to_share_it():
    text = service_for("http://mlflow:5000", "sentiment", no_prefect).describe()
    assert text.startswith("NOT SHARED") and "within one process only" in text and "PREFECT_API_URL" in text
    assert "PREFECT_API_URL" not in service_for("http://mlflow:5000", "m", with_prefect).describe()


def test_prefect_is_asked_only_for_a_tracking_server():
    def refuse() -> str | None:
        raise AssertionError("a local store must not need Prefect")

    assert service_for("sqlite:///x.db", "m", refuse).kind == FILE
    assert service_for("postgresql://db/mlflow", "m", refuse).kind == POSTGRESQL


def test_names_and_keys_are_per_model_stable_and_valid():
    assert alias_lock.limit_name("sentiment") == "transferline-aliases-sentiment"
    odd = alias_lock.limit_name("team/sentiment <v2>")
    assert not set("/%&<>") & set(odd)  # characters a Prefect limit name may not hold
    assert odd != alias_lock.limit_name("team-sentiment -v2-")  # replaced characters do not collide
    keys = {alias_lock.advisory_key(name) for name in ("a", "b", "sentiment")}
    assert len(keys) == 3 and all(-(2**63) <= k < 2**63 for k in keys)  # PostgreSQL bigint
    assert alias_lock.advisory_key("a") == alias_lock.advisory_key("a")
    sqlite = service_for("sqlite:////p/mlflow.db", "a", no_prefect)
    assert sqlite.name != service_for("sqlite:////p/mlflow.db", "b", no_prefect).name
    assert sqlite.name != service_for("sqlite:////q/mlflow.db", "a", no_prefect).name
