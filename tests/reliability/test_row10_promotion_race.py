"""Row 10: promotions racing for `champion` against one real MLflow store (SQLite), many trials.

Two spawned worker processes each hold their own Registry (own MlflowClient, own DB connections); per
trial both are released by a barrier at the same moment and call promote() with the same expected
champion and different versions. Exactly one may win; the other must get PromotionConflict and leave no
ledger entry, and the ledger's last champion entry must agree with the final alias.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from collections import Counter

import pytest

from tasks.registry import CHAMPION, PREVIOUS, PromotionConflict, Registry
from tasks.runtime import configure_environment

MODEL = "race-model"
TRIALS = 20
RACERS = 2


def _worker(uri: str, idx: int, barrier, tasks, results) -> None:  # runs in a spawned process
    configure_environment()
    from tasks.registry import PromotionConflict, Registry

    reg = Registry(uri, None)
    reg.get_alias(MODEL, CHAMPION)  # warm up: client, DB connection, imports
    results.put(("ready", idx))
    while (task := tasks.get()) is not None:
        trial, version, expected = task
        barrier.wait(timeout=120)
        try:
            reg.promote(MODEL, version, expected, actor=f"racer-{idx}", reason=f"race {trial}")
            results.put((trial, idx, version, "won", ""))
        except PromotionConflict as e:
            results.put((trial, idx, version, "conflict", str(e)))
        except Exception as e:  # reported, so the test fails with the cause instead of hanging
            results.put((trial, idx, version, "error", repr(e)))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """One SQLite store with 1 + 2*TRIALS versions of one tiny model source (no model logging)."""
    configure_environment()
    root = tmp_path_factory.mktemp("race")
    reg = Registry(f"sqlite:///{root / 'mlflow.db'}", root / "mlartifacts")
    client = reg.client()
    run = client.create_run(reg._experiment_id("race"))
    model = root / "tiny-model"
    model.mkdir()
    (model / "config.json").write_text('{"id2label": {"0": "rotten", "1": "fresh"}}')
    client.log_artifacts(run.info.run_id, str(model), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL)
    for _ in range(1 + RACERS * TRIALS):
        client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    reg.promote(MODEL, "1", expected_champion=None, actor="setup", reason="initial champion")
    return reg


def test_two_processes_racing_for_champion_have_exactly_one_winner(store: Registry, ledger) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(RACERS)
    results = ctx.Queue()
    inboxes = [ctx.Queue() for _ in range(RACERS)]
    workers = [
        ctx.Process(target=_worker, args=(store.tracking_uri, i, barrier, inboxes[i], results), daemon=True)
        for i in range(RACERS)
    ]
    for w in workers:
        w.start()
    races: list[dict] = []
    with ledger.fault(10, f"{RACERS} processes race for champion, {TRIALS} trials"):
        race_in_processes(store, workers, inboxes, results, races)
        ledger.figure(10, race_trials=TRIALS, race_trials_with_one_winner=len(races))


def race_in_processes(store: Registry, workers: list, inboxes: list, results, races: list[dict]) -> None:
    try:
        ready = {results.get(timeout=180)[1] for _ in range(RACERS)}
        assert ready == set(range(RACERS))
        champion = "1"
        for trial in range(TRIALS):
            first = 2 + RACERS * trial
            versions = [str(first + (i + trial) % RACERS) for i in range(RACERS)]  # alternate who gets which
            for i, inbox in enumerate(inboxes):
                inbox.put((trial, versions[i], champion))
            outcome = [results.get(timeout=120) for _ in range(RACERS)]
            errors = [o for o in outcome if o[3] == "error"]
            assert not errors, errors
            won = [o for o in outcome if o[3] == "won"]
            lost = [o for o in outcome if o[3] == "conflict"]
            assert len(won) == 1 and len(lost) == RACERS - 1, outcome
            winner = won[0][2]
            for _, _, loser_version, _, message in lost:
                assert f"champion moved from v{champion} to v{winner}" in message, message
                assert "re-run to evaluate against the new champion" in message
                assert loser_version != winner

            assert store.get_alias(MODEL, CHAMPION).version == winner
            assert store.get_alias(MODEL, PREVIOUS).version == champion
            moves = store.ledger(MODEL)
            last_champion = [e for e in moves if e.alias == CHAMPION][-1]
            assert (last_champion.from_version, last_champion.to_version) == (champion, winner)
            assert last_champion.actor == f"racer-{won[0][1]}"
            this_race = [e for e in moves if e.reason == f"race {trial}"]
            # The winner's champion + previous moves; nothing from the loser.
            assert [(e.alias, e.to_version) for e in this_race] == [(CHAMPION, winner), (PREVIOUS, champion)]
            races.append({"trial": trial, "winner": f"racer-{won[0][1]}", "version": winner})
            champion = winner
    finally:
        for inbox in inboxes:
            inbox.put(None)
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.terminate()

    moves = store.ledger(MODEL)
    assert [e.to_version for e in moves if e.alias == CHAMPION] == ["1", *(r["version"] for r in races)]
    assert store.get_alias(MODEL, CHAMPION).version == races[-1]["version"]
    wins = Counter(r["winner"] for r in races)
    print(
        f"\nraces={len(races)} one_winner={len(races)} "
        + " ".join(f"{k}={v}" for k, v in sorted(wins.items()))
        + " per_race="
        + ",".join(f"{r['trial']}:{r['winner']}->v{r['version']}" for r in races)
    )
    assert len(races) == TRIALS


def test_threads_racing_in_one_process_have_exactly_one_winner(store: Registry, ledger) -> None:
    """The same guarantee for racers sharing a process (the in-process lock), each with its own client."""
    regs = [Registry(store.tracking_uri, None) for _ in range(RACERS)]
    base = int(store.list_versions(MODEL)[-1].version)
    client = store.client()
    source = client.get_model_version(MODEL, "1")
    new = [
        client.create_model_version(MODEL, source.source, run_id=source.run_id).version for _ in range(2 * 5)
    ]
    assert int(new[0]) == base + 1
    one_winner = 0
    with ledger.fault(10, f"{RACERS} threads of one process race for champion, 5 trials"):
        for trial in range(5):
            race_in_threads(store, regs, new, trial)
            one_winner += 1
    ledger.figure(10, race_trials=5, race_trials_with_one_winner=one_winner)


def race_in_threads(store: Registry, regs: list[Registry], new: list[str], trial: int) -> None:
    champion = store.get_alias(MODEL, CHAMPION).version
    barrier = threading.Barrier(RACERS)
    out: queue.Queue = queue.Queue()

    def race(i: int, version: str, champion: str = champion, barrier=barrier, out=out) -> None:
        barrier.wait(timeout=30)
        try:
            regs[i].promote(MODEL, version, champion, actor=f"thread-{i}", reason="thread race")
            out.put(("won", version))
        except PromotionConflict:
            out.put(("conflict", version))

    threads = [threading.Thread(target=race, args=(i, str(new[2 * trial + i]))) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    results = sorted(out.get_nowait() for _ in range(RACERS))
    assert [r[0] for r in results] == ["conflict", "won"]
    winner = results[1][1]
    assert store.get_alias(MODEL, CHAMPION).version == winner
    assert [e for e in store.ledger(MODEL) if e.alias == CHAMPION][-1].to_version == winner


def test_promotion_conflict_names_both_versions(store: Registry) -> None:
    champion = store.get_alias(MODEL, CHAMPION).version
    stale = str(int(champion) - 1)
    before = len(store.ledger(MODEL))
    with pytest.raises(PromotionConflict) as err:
        store.promote(MODEL, "1", expected_champion=stale)
    assert str(err.value).startswith(
        f"champion moved from v{stale} to v{champion} since the gate evaluated against v{stale}; "
        "re-run to evaluate against the new champion"
    )
    assert len(store.ledger(MODEL)) == before
