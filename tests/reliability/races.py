"""Promotion races between project checkouts, judged against the registry and its ledger.

Shared by reliability rows 10 and 17 (tests/reliability/test_row10_17_cross_checkout_races.py) and
bench/scaleout.py. A Racer is a separate process in its own checkout (tests/reliability/racer.py); each
race gives two racers the same wall-clock instant to act on the same champion: both promote a different
version, or one promotes while the other rolls back (with the champion it looked at). The judge then
checks what must hold after every race: one winner, a loser told which move won and by whom, the aliases
where the winner put them, and the ledger recording the winner's moves only and agreeing with the
aliases.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
START_AHEAD_S = 0.4  # both racers get their orders, then act at the same instant this far ahead


@dataclass
class Racer:
    """One racer process; its JSON answers arrive on a queue (other output goes to its log)."""

    name: str
    proc: subprocess.Popen
    answers: queue.Queue = field(default_factory=queue.Queue)
    actor: str = ""

    def send(self, command: dict) -> None:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float = 180) -> dict:
        try:
            return self.answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"racer {self.name} did not answer within {timeout:g} s") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def checkout(folder: Path) -> Path:
    """A checkout of the project (its code and params.yaml) in `folder`: what a machine of infra/ runs.
    No DVC or git state: racing for aliases touches neither."""
    from tests.conftest import PROJECT_FILES

    for rel in PROJECT_FILES:
        src, dst = ROOT / rel, folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    return folder


HOLD = """
import sys, time
from tasks import alias_lock
uri, model, holder = sys.argv[1:4]
with alias_lock.hold(alias_lock.service_for(uri, model), uri, holder):
    print("held", flush=True)
    time.sleep(3600)
"""


def hold_lock(tracking_uri: str, model: str, env: dict[str, str], holder: str) -> subprocess.Popen:
    """A process holding `model`'s alias lock (the service `env` selects) until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, tracking_uri, model, holder], cwd=ROOT, stdout=subprocess.PIPE,
        text=True, env={**env, "PYTHONPATH": str(ROOT)}, start_new_session=True,
    )  # fmt: skip
    line = proc.stdout.readline().strip()
    assert line == "held", f"the lock holder did not take the lock ({proc.poll()}): {line!r}"
    return proc


def start_racer(name: str, checkout: Path, env: dict[str, str], log: Path) -> Racer:
    """A racer process in `checkout` with `env` (MLFLOW_TRACKING_URI, PREFECT_API_URL, ...)."""
    env = {**env, "PYTHONPATH": str(ROOT)}  # `tests` from the repository, `tasks` from the checkout
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.racer", name],
        cwd=checkout, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=log.open("w"), text=True, start_new_session=True,
    )  # fmt: skip
    racer = Racer(name, proc)

    def read() -> None:
        for line in proc.stdout:
            if line.startswith("{"):
                racer.answers.put(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    return racer


def wait_ready(racers: list[Racer], timeout: float = 300) -> None:
    for racer in racers:
        answer = racer.receive(timeout)
        assert answer["outcome"] == "ready", answer
        racer.actor = answer["actor"]


def register_versions(tracking_uri: str, model: str, count: int, scratch: Path) -> list[str]:
    """`count` versions of `model` from one tiny logged folder (what a version holds does not matter to a
    race); returns their numbers."""
    from mlflow.exceptions import MlflowException

    from tasks.registry import Registry

    served = tracking_uri.startswith(("http://", "https://"))  # a server keeps artifacts where it wants
    registry = Registry(tracking_uri, None if served else scratch / "mlartifacts")
    client = registry.client()
    run = client.create_run(registry._experiment_id("race-sources" if served else "race-sources-direct"))
    folder = scratch / f"{model}-source"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"id2label": {"0": "rotten", "1": "fresh"}}')
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(model)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{run.info.artifact_uri}/model"
    # str: a tracking server answers "3", a store used directly 3
    return [
        str(client.create_model_version(model, source, run_id=run.info.run_id).version) for _ in range(count)
    ]


@dataclass(frozen=True)
class Race:
    trial: int
    kind: str  # "promote/promote" or "promote/rollback"
    winner: str  # the winning racer's actor
    champion: str  # after the race
    seconds: float  # the slower racer's call
    ledger_ok: bool  # ledger entries of this race are the winner's, and the ledger agrees with the aliases


def race(registry: Any, model: str, racers: list[Racer], trial: int, new: list[str]) -> Race:
    """One race on `model`: racers[0] promotes new[0]; racers[1] promotes new[1] (even trials) or rolls back
    to the version before the champion (odd trials), both against the champion they read now. Asserts
    everything the plan demands; returns what happened."""
    from tasks.registry import CHAMPION, PREVIOUS

    champion = registry.get_alias(model, CHAMPION).version
    previous = registry.get_alias(model, PREVIOUS)
    rollback = trial % 2 == 1 and previous is not None
    reason = f"race {trial}"
    at = time.time() + START_AHEAD_S
    first, second = (racers[0], racers[1]) if trial % 4 < 2 else (racers[1], racers[0])  # swap roles
    orders = {"expected": champion, "at": at, "reason": reason, "model": model}
    first.send({"op": "promote", "version": new[0], **orders})
    target = previous.version if rollback else new[1]
    second.send(
        {"op": "rollback", "to": target, **orders}
        if rollback
        else {"op": "promote", "version": target, **orders}
    )
    outcomes = {first.actor: (first.receive(), new[0]), second.actor: (second.receive(), target)}
    errors = [o for o, _ in outcomes.values() if o["outcome"] == "error"]
    assert not errors, errors
    won = [(actor, to) for actor, (o, to) in outcomes.items() if o["outcome"] == "won"]
    lost = [o for o, _ in outcomes.values() if o["outcome"] == "conflict"]
    assert len(won) == 1 and len(lost) == 1, outcomes
    winner, to = won[0]
    message = lost[0]["message"]
    assert f"champion moved from v{champion} to v{to}" in message, message  # the loser is told what won
    assert f"by {winner} at " in message and f"({reason})" in message, message  # ... and who moved it
    aliases = (registry.get_alias(model, CHAMPION).version, registry.get_alias(model, PREVIOUS).version)
    assert aliases == (to, champion), (
        f"champion, previous = {aliases}; {winner} moved them to {(to, champion)}"
    )
    seconds = max(o["seconds"] for o, _ in outcomes.values())
    agrees = ledger_agrees(registry, model, reason, winner, [(CHAMPION, to), (PREVIOUS, champion)])
    return Race(trial, "promote/rollback" if rollback else "promote/promote", winner, to, seconds, agrees)


def ledger_agrees(registry: Any, model: str, reason: str, winner: str, moves: list[tuple[str, str]]) -> bool:
    """This race's ledger entries are exactly the winner's moves, and every alias's last entry is where the
    alias points now."""
    from tasks.registry import ALIASES

    entries = registry.ledger(model)
    this_race = [(e.alias, e.to_version, e.actor) for e in entries if e.reason == reason]
    aliases = {alias: getattr(registry.get_alias(model, alias), "version", None) for alias in ALIASES}
    last = {}
    for e in entries:
        last[e.alias] = e.to_version
    return this_race == [(alias, to, winner) for alias, to in moves] and all(
        last.get(alias) == version for alias, version in aliases.items() if version is not None
    )


def scale_out_env(tracking_uri: str, prefect_api_url: str | None) -> dict[str, str]:
    """What a worker of infra/ has: the tracking server and the Prefect server every worker shares."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    if prefect_api_url:
        env["PREFECT_API_URL"] = prefect_api_url
    return env
