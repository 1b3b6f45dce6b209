"""The alias ledger: one append-only record per alias move, kept with the registry.

Each move is one MLflow run in the experiment ``<model name>-ledger`` (LEDGER_SUFFIX), so the MLflow UI
shows the ledger as that experiment's runs table instead of as tags on the registered model:

- run name ``champion: v1 → v2 · actor · reason`` (the UI's runs table shows names by default, params only
  once picked under Columns), start time = the move's time, user (``mlflow.user``) = the actor;
- params (immutable once logged, so an entry cannot be edited): model, alias, from_version, to_version,
  actor, reason, at, gate and approval (compact JSON), ``none`` where a version is missing;
- tag ``ledger_key`` = ``ledger.<epoch ms, 15 digits>.<8 hex>``, which sorts in write order;
- the run description, a readable sentence with the gate summary and the approval.

Registries written before kept one registered-model tag per move, named like ``ledger_key`` with the entry
as JSON. Those are still read, merged in key order with the runs; nothing writes them any more. The
writer (tasks/registry.py) calls ``append`` under its alias lock, after the aliases moved, and
``retract`` when a later step of the same move failed, so ledger and aliases agree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tasks import faults

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

LEDGER_SUFFIX = "-ledger"
LEGACY_PREFIX = "ledger."  # registered-model tags of registries written before the ledger experiment
KEY_TAG = "ledger_key"
POINTER_TAG = "alias_ledger"  # on the registered model: where its ledger lives (one tag, never more)
NO_VERSION = "none"
# Every value stays below the VARCHAR(5000) that PostgreSQL/MySQL enforce on the tag columns (MLflow's
# own limits are larger): params and tags of a ledger run, and the legacy tags, alike.
VALUE_LIMIT = 5000
_REASON_LIMIT = 500
_ACTOR_LIMIT = 200
_DETAIL_LIMIT = 1500  # gate / approval dicts, as compact JSON
_PAGE = 1000
_RUN_NAME_LIMIT = 250  # VARCHAR(250) in MLflow's SQL schema

Move = tuple[str, str | None, str | None]  # (alias, from_version, to_version)


@dataclass(frozen=True)
class LedgerEntry:
    """One alias move, as recorded with the registered model."""

    at: str  # ISO 8601, UTC
    actor: str
    alias: str
    from_version: str | None
    to_version: str | None
    reason: str
    gate: dict | None = None
    approval: dict | None = None
    key: str = ""  # ledger.<ms>.<hex>: orders entries; the run's ledger_key tag or the legacy tag name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def experiment_name(model_name: str) -> str:
    """The MLflow experiment that holds model_name's ledger."""
    return f"{model_name}{LEDGER_SUFFIX}"


def experiment_tags(model_name: str) -> dict[str, str]:
    """Tags of a new ledger experiment: its description, and the kind that makes MLflow's UI open it as
    a runs table (MLflow 3 otherwise may open an experiment as a GenAI traces overview)."""
    return {
        "mlflow.note.content": (
            f"Alias ledger of the registered model **{model_name}**: one run per move of its aliases "
            "(champion, challenger, previous), written by transferline with the move. Run name: alias, "
            "move, actor and reason; params: model, alias, from_version, to_version, actor, reason, at, "
            "gate, approval (pick them under Columns)."
        ),
        "mlflow.experimentKind": "custom_model_development",
    }


def default_actor() -> str:
    """``user@host`` of this process: who moved an alias when no actor is given."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def meta(actor: str | None, reason: str, gate: dict | None, approval: dict | None) -> dict:
    """The part of an entry shared by every move of one operation, clipped to the ledger's limits."""
    return {
        "actor": _clip(actor or default_actor(), _ACTOR_LIMIT),
        "reason": _clip(reason or "", _REASON_LIMIT),
        "gate": _small(gate),
        "approval": _small(approval),
    }


# -- writing -------------------------------------------------------------------------------------------
def append(
    client: MlflowClient,
    experiment_id: str,
    model_name: str,
    moves: list[Move],
    info: dict,
    legacy_tags: dict[str, str],
    written: list[str],
) -> None:
    """One run per move, keyed after every entry already recorded (call under the alias lock).

    Args:
        info: what meta() returned.
        legacy_tags: the registered model's tags (its legacy entries count for the order).
        written: receives each run id as it lands, so a failure can retract them.
    """
    last_ms = max(
        max((_key_ms(k) for k in legacy_tags if k.startswith(LEGACY_PREFIX)), default=0),
        _last_run_ms(client, experiment_id),
    )
    ms = max(int(time.time() * 1000), last_ms + 1)
    for i, (alias, before, after) in enumerate(moves):
        key = f"{LEGACY_PREFIX}{ms + i:015d}.{uuid.uuid4().hex[:8]}"
        entry = {"at": _iso(ms + i), "alias": alias, "from_version": before, "to_version": after, **info}
        _write_run(client, experiment_id, model_name, key, ms + i, entry, written)


def retract(client: MlflowClient, run_ids: list[str]) -> None:
    """Delete ledger runs of a move that did not complete (best effort; the caller re-raises)."""
    for run_id in run_ids:
        with contextlib.suppress(Exception):  # the original failure is what the caller reports
            client.delete_run(run_id)


def _write_run(
    client: MlflowClient,
    experiment_id: str,
    model_name: str,
    key: str,
    ms: int,
    entry: dict,
    written: list[str],
) -> None:
    from mlflow.entities import Param

    alias, before, after = entry["alias"], entry["from_version"], entry["to_version"]
    parts = (f"{alias}: {_v(before)} → {_v(after)}", entry["actor"], entry["reason"])
    name = " · ".join(" ".join(part.split()) for part in parts if part)  # one line
    run = client.create_run(
        experiment_id,
        start_time=ms,
        run_name=_clip(name, _RUN_NAME_LIMIT),
        tags={KEY_TAG: key, "mlflow.user": entry["actor"], "mlflow.note.content": _description(entry)},
    )
    written.append(run.info.run_id)  # from here on a failure retracts it
    faults.transient("ledger.write")  # reliability tests: a registry call failing halfway through a move
    fields = {
        "model": model_name,
        "alias": alias,
        "from_version": before or NO_VERSION,
        "to_version": after or NO_VERSION,
        "actor": entry["actor"],
        "reason": entry["reason"],
        "at": entry["at"],
        "gate": _json(entry["gate"]),
        "approval": _json(entry["approval"]),
    }
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in fields.items()])
    client.set_terminated(run.info.run_id, "FINISHED", end_time=ms)


def _last_run_ms(client: MlflowClient, experiment_id: str) -> int:
    newest = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    return int(newest[0].info.start_time or 0) if newest else 0


# -- reading -------------------------------------------------------------------------------------------
def read(client: MlflowClient, model_name: str, legacy_tags: dict[str, str]) -> list[LedgerEntry]:
    """Every recorded move of model_name, oldest first: the ledger runs and any legacy tags, merged."""
    entries = [_parse_legacy(k, v) for k, v in legacy_tags.items() if k.startswith(LEGACY_PREFIX)]
    experiment = client.get_experiment_by_name(experiment_name(model_name))
    if experiment is not None:
        token = None
        while True:
            page = client.search_runs([experiment.experiment_id], max_results=_PAGE, page_token=token)
            entries.extend(_parse_run(run) for run in page if run.data.params.get("model") == model_name)
            token = page.token
            if not token:
                break
    return sorted(entries, key=lambda e: e.key)


def _parse_run(run: Run) -> LedgerEntry:
    p = run.data.params

    def version(text: str | None) -> str | None:
        return None if not text or text == NO_VERSION else text

    return LedgerEntry(
        at=p.get("at", ""),
        actor=p.get("actor", ""),
        alias=p.get("alias", ""),
        from_version=version(p.get("from_version")),
        to_version=version(p.get("to_version")),
        reason=p.get("reason", ""),
        gate=_unjson(p.get("gate", "")),
        approval=_unjson(p.get("approval", "")),
        key=run.data.tags.get(KEY_TAG) or f"{LEGACY_PREFIX}{int(run.info.start_time or 0):015d}",
    )


def _parse_legacy(key: str, value: str) -> LedgerEntry:
    try:
        d = json.loads(value)
    except ValueError:
        d = {"reason": f"unreadable ledger entry: {value[:200]}"}

    def version(x: object) -> str | None:
        return None if x is None else str(x)

    return LedgerEntry(
        at=str(d.get("at", "")),
        actor=str(d.get("actor", "")),
        alias=str(d.get("alias", "")),
        from_version=version(d.get("from_version")),
        to_version=version(d.get("to_version")),
        reason=str(d.get("reason", "")),
        gate=d.get("gate"),
        approval=d.get("approval"),
        key=key,
    )


# -- helpers -------------------------------------------------------------------------------------------
def _description(entry: dict) -> str:
    """The run's description: the move as a sentence a person reads on the run's page."""
    lines = [f"**{entry['alias']}** moved from {_v(entry['from_version'])} to {_v(entry['to_version'])}"]
    lines.append(f"by {entry['actor']} at {entry['at']}.")
    if entry["reason"]:
        lines.append(f"\n\nReason: {entry['reason']}")
    for name in ("gate", "approval"):
        if entry[name] is not None:
            lines.append(f"\n\n{name.capitalize()}: `{_json(entry[name])}`")
    return _clip(" ".join(lines), VALUE_LIMIT)


def _v(version: str | None) -> str:
    return NO_VERSION if version is None else f"v{version}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _key_ms(key: str) -> int:
    try:
        return int(key.split(".")[1])
    except (IndexError, ValueError):
        return 0


def _json(detail: dict | None) -> str:
    return "" if detail is None else json.dumps(detail, separators=(",", ":"), sort_keys=True)


def _unjson(text: str) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return {"unreadable": text[:200]}
    return value if isinstance(value, dict) else {"value": value}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _small(detail: dict | None, limit: int = _DETAIL_LIMIT) -> dict | None:
    """A gate/approval dict small enough for a ledger entry: long strings cut, then nested values
    dropped, then the whole dict replaced by its cut JSON text."""
    if detail is None:
        return None
    detail = json.loads(json.dumps(detail, default=str))
    if len(json.dumps(detail)) <= limit:
        return detail
    cut = {k: _clip(v, 120) if isinstance(v, str) else v for k, v in detail.items()}
    if len(json.dumps(cut)) <= limit:
        return cut
    scalars = {k: v for k, v in cut.items() if isinstance(v, str | int | float | bool) or v is None}
    if len(json.dumps(scalars)) <= limit:
        return {**scalars, "truncated": True}
    return {"truncated": _clip(json.dumps(detail), limit - 20)}
