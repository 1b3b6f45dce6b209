"""Rows 10 and 17: promotions and rollbacks racing from two project checkouts through one tracking server.

The scale-out set-up of infra/, on loopback: PostgreSQL, an `mlflow server` on it (HTTP), a Prefect server
(on PostgreSQL as well), and two project checkouts (two folders, two processes: two machines) whose
racers (tests/reliability/racer.py) take the same instant to promote, or to promote against a rollback,
against the same registered model. Their alias lock is the Prefect global concurrency limit of the model
(tasks/alias_lock.py); every race must have exactly one winner, the loser must be told which move won and
by whom, and the ledger must agree with the aliases after every race (tests/reliability/races.py).

Also, with the same servers:
- a process SIGKILLed while it holds a model's lock blocks that model's promotions only until its lease
  runs out; meanwhile the races on another model go on (their locks are per model);
- behind the tracking server without a Prefect server, `transferline status` and the log say that alias
  moves are serialised within one process only;
- the PostgreSQL advisory lock (a registry used directly on PostgreSQL): a waiter is told who holds it,
  and a SIGKILLed holder frees it at once.

The benchmark (bench/scaleout.py) runs the same races, more of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import pytest

from tests import pgserver, services
from tests.reliability.ledger import Ledger
from tests.reliability.races import (
    ROOT,
    checkout,
    hold_lock,
    race,
    register_versions,
    scale_out_env,
    start_racer,
    wait_ready,
)

pytestmark = pytest.mark.pipeline

RACES = 4  # each kind twice; bench/scaleout.py runs 30 (and 10 on PostgreSQL directly)
MODEL = "transferline-sentiment"  # the checkouts' registry.model_name (params.yaml)
STUCK = "stuck-model"  # a model whose lock holder is killed
QUIET_PREFECT = {
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1",
    **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in ("SCHEDULER", "LATE_RUNS", "FOREMAN",
       "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS", "TASK_RUN_RECORDER", "TRIGGERS", "EVENT_PERSISTER")},
}  # fmt: skip


@pytest.fixture(scope="module")
def scale_out(tmp_path_factory: pytest.TempPathFactory):
    """PostgreSQL, an MLflow server and a Prefect server on it, two checkouts with a racer each, and a
    killed holder of STUCK's lock; all stopped afterwards."""
    base = tmp_path_factory.mktemp("scale-out")
    try:
        pg = pgserver.start()
    except pgserver.PostgresUnavailable as err:
        pytest.fail(f"PostgreSQL could not be started: {err}", pytrace=False)
    servers, racers = [], []
    try:
        store = pg.createdb("mlflow")
        prefect_db = pg.createdb("prefect").replace("postgresql://", "postgresql+asyncpg://")
        # Both servers start at once (each migrates its schema); the repossessor looks for expired leases
        # every second here (default 15 s), and services the races do not need stay off.
        servers.append(services.launch_prefect(prefect_db, base / "prefect", **QUIET_PREFECT))
        servers.append(services.launch_mlflow(store, base / "mlflow"))
        prefect, mlflow = servers
        env = scale_out_env(mlflow.url(), prefect.ready().url("/api"))
        # Killed at once while it holds STUCK's lock: the lease runs out while the rest starts and races.
        holder = hold_lock(mlflow.url(), STUCK, env, "holder@machine-a")
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        killed_at = time.monotonic()
        assert slots_taken(prefect, STUCK) == 1  # the dead holder's slot stays taken: its lease lives on
        checkouts = [checkout(base / name) for name in ("machine-a", "machine-b")]
        mlflow.ready()
        for name, folder in zip(("racer-a", "racer-b"), checkouts, strict=True):
            racers.append(start_racer(name, folder, env, base / f"{name}.log"))
        wait_ready(racers)
        yield {
            "base": base, "store": store, "checkouts": checkouts, "racers": racers, "killed_at": killed_at,
            "tracking": mlflow.url(), "prefect_api": prefect.url("/api"), "prefect": prefect,
        }  # fmt: skip
    finally:
        for racer in racers:
            racer.stop()
        for server in servers:
            server.stop()
        pg.stop()


def test_racing_checkouts_have_one_winner_per_race_told_to_the_loser(scale_out: dict, ledger: Ledger):
    from tasks.registry import Registry

    tracking, racers = scale_out["tracking"], scale_out["racers"]
    registry = Registry(tracking, None)  # the judge: reads only
    versions = register_versions(tracking, MODEL, 1 + 2 * RACES, scale_out["base"])
    racers[0].send({"op": "promote", "version": versions[0], "expected": None, "at": 0, "reason": "initial"})
    assert racers[0].receive()["outcome"] == "won"
    races = []
    with ledger.fault(17, f"2 checkouts race {RACES} times through an MLflow server on PostgreSQL"):
        for trial in range(RACES):
            races.append(race(registry, MODEL, racers, trial, versions[1 + 2 * trial : 3 + 2 * trial]))
            assert races[-1].ledger_ok, races[-1]
        assert Counter(r.kind for r in races) == {
            "promote/promote": RACES // 2,
            "promote/rollback": RACES // 2,
        }
    ledger.figure(10, race_trials=RACES, race_trials_with_one_winner=len(races))
    print(f"\nraces: {[(r.kind, r.winner, r.champion, round(r.seconds, 2)) for r in races]}")


def slots_taken(prefect: services.Server, model: str) -> int:
    """Active slots of the model's alias lock on the Prefect server, as its API reports them."""
    from tasks.alias_lock import limit_name

    with urllib.request.urlopen(prefect.url(f"/api/v2/concurrency_limits/{limit_name(model)}")) as response:
        return json.loads(response.read())["active_slots"]


UNSHARED = """
import logging, sys
from tasks.runtime import configure_environment
configure_environment()
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
from tasks.registry import Registry
from tests.conftest import cli
assert cli("status", "--project", sys.argv[1]) == 0
Registry(sys.argv[2], None).promote(sys.argv[3], "1", None, reason="no lock service")
"""


def test_status_and_the_log_say_which_service_serialises_alias_moves(scale_out: dict):
    racer = scale_out["racers"][0]
    racer.send({"op": "status"})
    lock = racer.receive()["alias_lock"]  # `transferline status --json` in checkout a
    assert lock["kind"] == "prefect" and lock["shared"] and lock["where"] == scale_out["prefect_api"]
    assert lock["name"] == "transferline-aliases-transferline-sentiment"

    # The same tracking server without a Prefect server: nothing serialises moves beyond one process.
    tracking = scale_out["tracking"]
    register_versions(tracking, "unshared-model", 1, scale_out["base"])
    alone = subprocess.run(
        [sys.executable, "-c", UNSHARED, str(scale_out["checkouts"][0]), tracking, "unshared-model"],
        cwd=ROOT, env={**scale_out_env(tracking, None), "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    assert "alias lock NOT SHARED" in alone.stdout and "PREFECT_API_URL" in alone.stdout, alone.stdout
    warnings = [line for line in alone.stderr.splitlines() if line.startswith("transferline.registry:")]
    assert len(warnings) == 1 and "NOT SHARED" in warnings[0], alone.stderr  # said once per process


def test_postgresql_advisory_lock_names_its_holder_and_dies_with_it(
    scale_out: dict, monkeypatch, ledger: Ledger
):
    from tasks import alias_lock

    uri, model = scale_out["store"], "advisory-model"
    service = alias_lock.service_for(uri, model)
    assert service.kind == alias_lock.POSTGRESQL and "@" not in service.where  # no credentials shown
    holder = hold_lock(uri, model, scale_out_env(uri, None), "holder@machine-a")
    try:
        monkeypatch.setitem(alias_lock.WAIT_S, alias_lock.POSTGRESQL, 1.0)
        with (
            pytest.raises(
                alias_lock.LockUnavailable, match="held by transferline alias lock: holder@machine-a"
            ),
            alias_lock.hold(service, uri, "waiter"),
        ):
            pytest.fail("took a lock another process holds")
        with ledger.fault(17, "the holder of a PostgreSQL advisory alias lock SIGKILLed: free at once"):
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
            started = time.monotonic()
            with alias_lock.hold(service, uri, "waiter"):
                assert time.monotonic() - started < 1.0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_a_killed_lock_holder_blocks_its_model_only_until_its_lease_runs_out(scale_out: dict, ledger: Ledger):
    """Last in the module, so the lease of the holder killed while the servers started runs out during the
    tests above (it lasts alias_lock.LEASE_S, the shortest Prefect grants) rather than in a wait here."""
    from tasks import alias_lock
    from tasks.registry import Registry

    tracking, racers = scale_out["tracking"], scale_out["racers"]
    registry = Registry(tracking, None)
    register_versions(tracking, STUCK, 2, scale_out["base"])
    with ledger.fault(17, "the holder of a model's alias lock SIGKILLed: the next move waits for its lease"):
        orders = {"expected": None, "at": 0, "reason": "after the kill", "model": STUCK}
        racers[1].send({"op": "promote", "version": "1", **orders})
        outcome = racers[1].receive(timeout=alias_lock.WAIT_S[alias_lock.PREFECT] + 30)
        assert outcome["outcome"] == "won", outcome
        assert registry.get_alias(STUCK, "champion").version == "1"
        assert slots_taken(scale_out["prefect"], STUCK) == 0  # released by the promotion that took it
    since = time.monotonic() - scale_out["killed_at"]
    print(
        f"STUCK promoted {since:.0f} s after its lock holder was killed ({outcome['seconds']:.1f} s waiting)"
    )
