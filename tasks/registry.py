"""Thin MLflow adapter: log and register a model version, read versions, move aliases.

Aliases only, never stages: ``challenger`` is the newest logged version, ``champion`` the one that
serves, ``previous`` the champion it replaced. Every alias move is written to the alias ledger
(tasks/ledger.py) in the same critical section; what a logged model is made of is tasks/packaging.py.
mlflow is imported inside functions because it costs seconds at import, and nothing here touches global
state at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from tasks import alias_lock, faults, ledger, packaging
from tasks.ledger import LedgerEntry, Move
from tasks.paths import ProjectPaths

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)  # the aliases the pipeline moves, in the order people read them

# Registry calls over HTTP: MLflow's defaults (7 retries with exponential backoff, 120 s timeout)
# turn a dead server into minutes of silence. Worst case here: 3 attempts x 5 s + ~3 s backoff.
_FAST_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_COMPLETE_MARKER = ".registry-download.json"

# Model-version descriptions are VARCHAR(5000) in the SQL schema as well.
_DESCRIPTION_LIMIT = 5000
MODEL_CARD_ARTIFACT = "model_card.md"

_ENV_LOCK = threading.RLock()  # os.environ and mlflow's fluent URIs are process-wide
_ALIAS_LOCK = threading.Lock()
_UNSHARED_WARNED: set[tuple[str, str]] = set()  # (uri, model) whose unshared alias lock was logged
log = logging.getLogger("transferline.registry")

T = TypeVar("T")


class RegistryError(RuntimeError):
    """The registry is unreachable or refused an operation; the message names the URI and a fix."""


class PromotionConflict(RegistryError):
    """An alias moved between the decision and the write (compare-and-set refused)."""


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    run_id: str | None
    aliases: tuple[str, ...]
    tags: dict[str, str]
    metrics: dict[str, float]  # the latest value of each metric of the version's run
    created_ms: int

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["aliases"] = list(self.aliases)
        return d


@dataclass(frozen=True)
class RunDetails:
    """What a version's MLflow run recorded: params, metrics, tags and its artifact files."""

    run_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifacts: tuple[str, ...]  # file paths relative to the run's artifact root

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["artifacts"] = list(self.artifacts)
        return d


@dataclass(frozen=True)
class Registry:
    tracking_uri: str  # also used as the registry URI, e.g. sqlite:////abs/mlflow.db
    artifact_root: Path | None  # artifact location of experiments created here; None = MLflow default

    @classmethod
    def for_project(cls, paths: ProjectPaths) -> Registry:
        """The project's registry: MLFLOW_TRACKING_URI when set, else SQLite beside the project. New
        experiments keep their artifacts in the project's mlartifacts/, except behind a tracking server,
        which decides itself (e.g. proxied to S3, as in infra/docker-compose.yml)."""
        uri = os.environ.get("MLFLOW_TRACKING_URI") or paths.default_tracking_uri
        served = urlparse(uri).scheme in ("http", "https")
        return cls(uri, None if served else paths.mlflow_artifacts)

    # -- plumbing --------------------------------------------------------------------------------------
    @cached_property
    def _client(self) -> MlflowClient:
        from mlflow import MlflowClient

        # For SQLite the first client on a new file runs the schema migrations (~5 s).
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def client(self) -> MlflowClient:
        """The MlflowClient for this registry (created once per instance)."""
        return self._client

    def _call(self, what: str, fn: Callable[[], T], *, fast: bool = True) -> T:
        """Run fn, turning store/connection failures into a RegistryError that says what to do."""
        from mlflow.exceptions import MlflowException
        from requests import RequestException
        from sqlalchemy.exc import SQLAlchemyError

        try:
            if fast:
                with _fast_http(self.tracking_uri):
                    return fn()
            return fn()
        except RegistryError:
            raise
        except (MlflowException, OSError, SQLAlchemyError, RequestException) as e:
            raise RegistryError(self._explain(what, e)) from e

    def _explain(self, what: str, e: Exception) -> str:
        code = getattr(e, "error_code", None)
        msg = f"MLflow registry at {self.tracking_uri}: {what} failed: {e}"
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS"):
            return msg  # the registry answered; the request itself was wrong
        scheme = urlparse(self.tracking_uri).scheme
        if scheme == "sqlite":
            hint = "check that the database's folder exists and is writable, or pass another tracking URI"
        elif scheme in ("http", "https"):
            hint = (
                "check that the MLflow server is running and reachable from here (`mlflow server ...`),"
                " or use a local sqlite:/// tracking URI"
            )
        else:
            hint = "check the tracking URI"
        return f"{msg}\n-> {hint}"

    # -- reads -----------------------------------------------------------------------------------------
    def _alias_map(self, model_name: str) -> dict[str, str] | None:
        """alias -> version of a registered model; None when the model does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            rm = self.client().get_registered_model(model_name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return {alias: str(version) for alias, version in (rm.aliases or {}).items()}

    def _info(self, mv: ModelVersion, alias_map: dict[str, str]) -> VersionInfo:
        from mlflow.exceptions import MlflowException

        metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                metrics = dict(self.client().get_run(mv.run_id).data.metrics)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":  # a deleted run leaves the version usable
                    raise
        version = str(mv.version)
        return VersionInfo(
            name=mv.name,
            version=version,
            run_id=mv.run_id or None,
            aliases=tuple(sorted(a for a, v in alias_map.items() if v == version)),
            tags=dict(mv.tags or {}),
            metrics=metrics,
            created_ms=int(mv.creation_timestamp or 0),
        )

    def _get_alias(self, model_name: str, alias: str) -> VersionInfo | None:
        # Read the alias map rather than get_model_version_by_alias: a missing alias comes back as
        # INVALID_PARAMETER_VALUE there, indistinguishable from other bad input without parsing text.
        alias_map = self._alias_map(model_name)
        if alias_map is None or alias not in alias_map:
            return None
        return self._info(self.client().get_model_version(model_name, alias_map[alias]), alias_map)

    def get_alias(self, model_name: str, alias: str) -> VersionInfo | None:
        """The version `alias` points at; None when the model or the alias does not exist."""
        return self._call(f"reading alias {model_name}@{alias}", lambda: self._get_alias(model_name, alias))

    def _list_versions(self, model_name: str) -> list[VersionInfo]:
        alias_map = self._alias_map(model_name)
        if alias_map is None:
            return []
        # Search results leave aliases empty (mlflow#16734), hence the alias map from the model.
        found: list[ModelVersion] = []
        token = None
        while True:
            page = self.client().search_model_versions(
                f"name = {_literal(model_name)}", max_results=1000, page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                break
        return sorted((self._info(mv, alias_map) for mv in found), key=lambda v: int(v.version))

    def list_versions(self, model_name: str) -> list[VersionInfo]:
        """Every version of model_name, ascending by number; [] when the model does not exist."""
        return self._call(f"listing versions of {model_name}", lambda: self._list_versions(model_name))

    def status(self, model_name: str) -> dict:
        """A JSON-ready summary: the three aliases and every version."""

        def read() -> dict:
            versions = self._list_versions(model_name)

            def holder(alias: str) -> dict | None:
                return next((v.to_dict() for v in versions if alias in v.aliases), None)

            return {
                "model": model_name,
                "tracking_uri": self.tracking_uri,
                CHAMPION: holder(CHAMPION),
                CHALLENGER: holder(CHALLENGER),
                PREVIOUS: holder(PREVIOUS),
                "versions": [v.to_dict() for v in versions],
            }

        return self._call(f"reading the status of {model_name}", read)

    # -- model files -----------------------------------------------------------------------------------
    def download_model_dir(self, model_name: str, version: str, dest: Path) -> Path:
        """Download a version's logged model as one folder that transformers' from_pretrained loads
        (packaging.unpack_hf). ``dest`` is reused when it already holds a complete copy of the same version.
        """
        dest = Path(dest)
        mv = self._call(
            f"reading {model_name} v{version}", lambda: self.client().get_model_version(model_name, version)
        )
        stamp = {"model": model_name, "version": str(version), "source": mv.source}
        if _read_marker(dest) == stamp and (dest / "config.json").is_file():
            return dest

        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
            download = self._call(
                f"downloading {model_name} v{version}",
                lambda: self._download(model_name, str(version), Path(tmp) / "download"),
                fast=False,
            )
            staged = Path(tmp) / "hf"
            if not packaging.unpack_hf(download, staged):
                raise RegistryError(f"{model_name} v{version} was not logged with mlflow.transformers")
            # The marker is written last, so an interrupted download is never taken as complete.
            (staged / _COMPLETE_MARKER).write_text(json.dumps(stamp))
            if dest.exists():
                shutil.rmtree(dest)
            staged.rename(dest)
        return dest

    def _download(self, model_name: str, version: str, into: Path) -> Path:
        """Download the model's artifacts below `into`; returns the folder holding MLmodel."""
        import mlflow

        # Not "models:/name/version": that resolves through mlflow's *global* registry URI whatever
        # registry_uri says, and silently creates an empty ./mlflow.db when none is set.
        source = self.client().get_model_version_download_uri(model_name, version)
        into.mkdir(parents=True)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(into), tracking_uri=self.tracking_uri
        )
        return Path(local)

    # -- writes ----------------------------------------------------------------------------------------
    def log_and_register(
        self,
        *,
        model_name: str,
        experiment: str,
        model_dir: Path,
        params: dict[str, str | int | float | bool | None],
        metrics: dict[str, float],
        artifacts: list[Path],
        tags: dict[str, str],
        run_name: str | None = None,
        actor: str | None = None,
    ) -> VersionInfo:
        """Log one run (params, metrics, tags, artifacts, the HF model) and register it as `challenger`.

        Args:
            model_dir: a save_pretrained folder (config.json with id2label, weights, tokenizer files).
            tags: set on the run and on the new model version.
            actor: who registers, for the alias ledger (default: user@host).
        Returns:
            The new version, as read back from the registry.
        """
        model_dir = Path(model_dir).resolve()
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} is not a save_pretrained folder (no config.json)")
        missing = [str(p) for p in artifacts if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"artifacts to log do not exist: {', '.join(missing)}")

        # Fail fast on a dead registry before spending seconds loading the model.
        experiment_id = self._call(
            f"opening experiment {experiment!r}", lambda: self._experiment_id(experiment)
        )
        pipeline_parts = packaging.load_hf(model_dir)

        def log() -> str:
            import mlflow

            with (
                _fluent_uris(self.tracking_uri),
                mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run,
            ):
                mlflow.log_params(_stringify_params(params))
                if metrics:
                    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
                for path in map(Path, artifacts):
                    if path.is_dir():
                        mlflow.log_artifacts(str(path), artifact_path=path.name)
                    else:
                        mlflow.log_artifact(str(path))
                version = packaging.log_model(
                    pipeline_parts, model_name=model_name, run_id=run.info.run_id, tags=tags
                )
            # Reliability tests kill the process here: the version exists, no alias points at it yet.
            faults.point("registry.version-created")
            gate = None
            if "gate" in tags:
                gate = {"result": tags["gate"], "summary": str(tags.get("gate_summary", ""))}
            meta = ledger.meta(actor, f"registered v{version} from run {run.info.run_id}", gate, None)
            with _alias_lock(self.tracking_uri, model_name):
                current = (self._alias_map(model_name) or {}).get(CHALLENGER)
                self._apply_moves(model_name, [(CHALLENGER, current, version)], meta)
            return version

        version = self._call(f"logging and registering {model_name}", log, fast=False)
        return self._call(
            f"reading {model_name} v{version}",
            lambda: self._info(
                self.client().get_model_version(model_name, version), self._alias_map(model_name)
            ),
        )

    def log_evidence(
        self,
        *,
        experiment: str,
        run_name: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        artifacts: list[Path],
    ) -> str:
        """Log one evidence run (no model version); returns its run id."""
        experiment_id = self._call(
            f"opening experiment {experiment!r}", lambda: self._experiment_id(experiment)
        )

        def log() -> str:
            import mlflow

            with (
                _fluent_uris(self.tracking_uri),
                mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run,
            ):
                mlflow.log_params(_stringify_params(params))
                mlflow.log_metrics({_metric_key(k): float(v) for k, v in metrics.items()})
                for path in artifacts:
                    mlflow.log_artifact(str(path))
                return run.info.run_id

        return self._call(f"logging evidence run {run_name!r}", log, fast=False)

    def _experiment_id(self, name: str, tags: dict[str, str] | None = None) -> str:
        """The id of experiment `name`, created (with `tags`) or restored when needed."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        exp = client.get_experiment_by_name(name)
        if exp is None:
            location = self.artifact_root.resolve().as_uri() if self.artifact_root else None
            try:
                return client.create_experiment(name, artifact_location=location, tags=tags)
            except MlflowException as e:  # another process created it first
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = client.get_experiment_by_name(name)
        if exp.lifecycle_stage == "deleted":  # runs cannot start in a deleted experiment
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    # -- alias moves (compare-and-set + ledger, one critical section) ----------------------------------
    def set_alias_checked(
        self,
        model_name: str,
        alias: str,
        version: str,
        expected_current: str | None,
        *,
        actor: str | None = None,
        reason: str = "",
        gate: dict | None = None,
        approval: dict | None = None,
    ) -> str | None:
        """Compare-and-set: point `alias` at `version` only if it still points at expected_current.

        The move and its ledger entry are written under one lock, so the ledger always agrees with the
        alias. Returns the version the alias pointed at before. Raises PromotionConflict if it moved
        (and records nothing).
        """
        version = str(version)
        expected = None if expected_current is None else str(expected_current)
        meta = ledger.meta(actor, reason, gate, approval)

        def swap() -> str | None:
            self._require_version(model_name, version)  # a clear "not found" before anything moves
            with _alias_lock(self.tracking_uri, model_name):
                current = (self._alias_map(model_name) or {}).get(alias)
                self._check_expected(model_name, alias, expected, current)
                self._apply_moves(model_name, [(alias, current, version)], meta)
                return current

        return self._call(f"moving {model_name}@{alias} to v{version}", swap)

    def promote(
        self,
        model_name: str,
        version: str,
        expected_champion: str | None,
        *,
        actor: str | None = None,
        reason: str = "",
        gate: dict | None = None,
        approval: dict | None = None,
    ) -> str | None:
        """Make `version` the champion (compare-and-set) and keep the one it replaces as `previous`.

        Both moves and their ledger entries happen in one critical section. Returns the replaced
        champion (None for the first one). Raises PromotionConflict when the champion is no longer
        expected_champion: the gate evaluated against another model.
        """
        version = str(version)
        expected = None if expected_champion is None else str(expected_champion)
        meta = ledger.meta(actor, reason or f"promoted v{version}", gate, approval)

        def swap() -> str | None:
            self._require_version(model_name, version)
            with _alias_lock(self.tracking_uri, model_name):
                aliases = self._alias_map(model_name) or {}
                current = aliases.get(CHAMPION)
                self._check_expected(model_name, CHAMPION, expected, current)
                moves: list[Move] = [(CHAMPION, current, version)]
                if current is not None and current != version:
                    moves.append((PREVIOUS, aliases.get(PREVIOUS), current))
                if self._apply_moves(model_name, moves, meta):
                    self.client().set_model_version_tag(model_name, version, "promoted_at", _now_iso())
                return current

        return self._call(f"promoting {model_name} v{version}", swap)

    def set_challenger(
        self, model_name: str, version: str, actor: str | None = None, reason: str = ""
    ) -> str | None:
        """Point `challenger` at `version` (the newest registration wins; no expectation to check).

        Returns the previous challenger.
        """
        version = str(version)
        meta = ledger.meta(actor, reason or f"registered v{version}", None, None)

        def swap() -> str | None:
            self._require_version(model_name, version)
            with _alias_lock(self.tracking_uri, model_name):
                current = (self._alias_map(model_name) or {}).get(CHALLENGER)
                self._apply_moves(model_name, [(CHALLENGER, current, version)], meta)
                return current

        return self._call(f"moving {model_name}@{CHALLENGER} to v{version}", swap)

    def rollback(
        self,
        model_name: str,
        to_version: str | None = None,
        reason: str = "",
        actor: str | None = None,
        expected_champion: str | None = None,
    ) -> tuple[str | None, str]:
        """Move `champion` back to `to_version` (default: the version holding `previous`).

        `previous` then holds the champion that was replaced. Both moves are recorded in the ledger
        with `reason`. Returns (from_version, to_version). Raises RegistryError without moving anything
        when the reason is empty, when there is no previous version and no target, when the target does
        not exist or already is the champion; PromotionConflict when `expected_champion` is given and the
        champion is another version by the time the lock is held (a promotion landed first: rolling back
        then would undo a model nobody looked at).
        """
        if not reason or not reason.strip():
            raise RegistryError("a rollback needs a reason (it is recorded in the alias ledger)")
        if to_version is not None and not str(to_version).strip().isdigit():
            raise RegistryError(f"version must be a number like 3, got {to_version!r}")
        wanted = None if to_version is None else str(int(str(to_version).strip()))
        meta = ledger.meta(actor, reason.strip(), None, None)

        def swap() -> tuple[str | None, str]:
            with _alias_lock(self.tracking_uri, model_name):
                aliases = self._alias_map(model_name)
                if aliases is None:
                    raise RegistryError(f"no registered model {model_name!r} in {self.tracking_uri}")
                current = aliases.get(CHAMPION)
                if expected_champion is not None:
                    self._check_expected(
                        model_name, CHAMPION, str(expected_champion), current, "the rollback was decided on",
                        "nothing was rolled back; look again at the new",
                    )  # fmt: skip
                target = wanted or aliases.get(PREVIOUS)
                if target is None:
                    raise RegistryError(
                        f"{model_name} has no 'previous' version to roll back to (champion: "
                        f"{_v(current)}); name the version to restore with --to VERSION"
                    )
                self._require_version(model_name, target)
                if target == current:
                    raise RegistryError(f"v{target} already is the champion of {model_name}; nothing moved")
                moves: list[Move] = [(CHAMPION, current, target)]
                if current is not None:
                    moves.append((PREVIOUS, aliases.get(PREVIOUS), current))
                self._apply_moves(model_name, moves, meta)
                return current, target

        return self._call(f"rolling back {model_name}", swap)

    def _check_expected(
        self,
        model_name: str,
        alias: str,
        expected: str | None,
        current: str | None,
        since: str = "the gate evaluated against",
        advice: str = "re-run to evaluate against the new",
    ) -> None:
        """PromotionConflict when `alias` is no longer `expected`, naming who moved it (the ledger's
        last entry for it), so the loser of a race knows which move won. Call under the alias lock."""
        if current == expected:
            return
        mover = ""
        with contextlib.suppress(Exception):  # who moved it is extra detail; the refusal stands without it
            rm = self.client().get_registered_model(model_name)
            moves = ledger.read(self.client(), model_name, dict(rm.tags or {}))
            last = next((e for e in reversed(moves) if e.alias == alias and e.to_version == current), None)
            if last is not None:
                mover = f". {_v(current)} was made {alias} by {last.actor} at {last.at}" + (
                    f" ({last.reason})" if last.reason else ""
                )
        raise PromotionConflict(
            f"{alias} moved from {_v(expected)} to {_v(current)} since {since} {_v(expected)}; {advice} "
            f"{alias} (model {model_name}, registry {self.tracking_uri}){mover}"
        )

    def _require_version(self, model_name: str, version: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client().get_model_version(model_name, version)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(
                    f"{model_name} has no version {version} in {self.tracking_uri}"
                    " (`transferline registry show` lists the versions)"
                ) from e
            raise

    def _apply_moves(self, model_name: str, moves: list[Move], meta: dict) -> bool:
        """Write alias moves, check they held, then append one ledger entry per move. Call under the
        alias lock. No-op moves are skipped. Returns whether anything moved.

        A failure after some aliases moved puts them and any ledger entries already written back (best
        effort), so ledger and aliases agree; a concurrent writer outside the lock is reported, not undone.
        """
        moves = [m for m in moves if m[1] != m[2]]
        if not moves:
            return False
        client = self.client()
        done: list[Move] = []
        written: list[str] = []
        try:
            for move in moves:
                alias, _, after = move
                if after is None:
                    client.delete_registered_model_alias(model_name, alias)
                else:
                    client.set_registered_model_alias(model_name, alias, after)
                done.append(move)
            rm = client.get_registered_model(model_name)
            now = {a: str(v) for a, v in (rm.aliases or {}).items()}
            for alias, _, after in moves:
                # Aliases are last-writer-wins; a writer outside our lock (another host) shows up here.
                if now.get(alias) != after:
                    done.clear()  # the other writer's value stays
                    raise PromotionConflict(
                        f"{alias} of {model_name} was set to {_v(after)} but now points at "
                        f"{_v(now.get(alias))}: another promotion ran concurrently; re-run to evaluate "
                        "against it"
                    )
            self._append_ledger(model_name, dict(rm.tags or {}), moves, meta, written)
        except BaseException:
            ledger.retract(client, written)
            for alias, before, _after in reversed(done):
                with contextlib.suppress(Exception):
                    if before is None:
                        client.delete_registered_model_alias(model_name, alias)
                    else:
                        client.set_registered_model_alias(model_name, alias, before)
            raise
        return True

    def _append_ledger(
        self, model_name: str, tags: dict[str, str], moves: list[Move], meta: dict, written: list[str]
    ) -> None:
        """One ledger run per move; run ids go to `written` as they land, so a failure can take them back."""
        name = ledger.experiment_name(model_name)
        experiment_id = self._experiment_id(name, ledger.experiment_tags(model_name))
        ledger.append(self.client(), experiment_id, model_name, moves, meta, tags, written)
        if tags.get(ledger.POINTER_TAG) != name:  # one constant tag says where the ledger is
            self.client().set_registered_model_tag(model_name, ledger.POINTER_TAG, name)

    # -- ledger, lookups, run artifacts, model card ----------------------------------------------------
    def ledger(self, model_name: str) -> list[LedgerEntry]:
        """Every recorded alias move of model_name, oldest first; [] when the model does not exist."""
        from mlflow.exceptions import MlflowException

        def read() -> list[LedgerEntry]:
            try:
                rm = self.client().get_registered_model(model_name)
            except MlflowException as e:
                if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return []
                raise
            return ledger.read(self.client(), model_name, dict(rm.tags or {}))

        return self._call(f"reading the alias ledger of {model_name}", read)

    def get_version(self, model_name: str, version: str) -> VersionInfo:
        """One version with its aliases, tags and run metrics; RegistryError when it does not exist."""

        def read() -> VersionInfo:
            self._require_version(model_name, str(version))
            return self._info(
                self.client().get_model_version(model_name, str(version)), self._alias_map(model_name) or {}
            )

        return self._call(f"reading {model_name} v{version}", read)

    def find_version(self, model_name: str, tag: str, value: str) -> VersionInfo | None:
        """The newest version of model_name whose tag `tag` equals `value` (e.g. a run key), or None.

        Lets a re-run after a crash reuse the version it registered instead of registering a duplicate.
        """
        value = str(value)
        if "`" in tag:
            raise ValueError(f"tag names with backticks are not searchable: {tag!r}")
        query = f"name = {_literal(model_name)}"
        if not ("'" in value and '"' in value):  # otherwise no literal can hold it: filter below
            query += f" and tags.`{tag}` = {_literal(value)}"

        def search() -> VersionInfo | None:
            found: list[ModelVersion] = []
            token = None
            while True:
                page = self.client().search_model_versions(query, max_results=1000, page_token=token)
                found.extend(mv for mv in page if (mv.tags or {}).get(tag) == value)
                token = page.token
                if not token:
                    break
            if not found:
                return None
            newest = max(found, key=lambda mv: int(mv.version))
            return self._info(newest, self._alias_map(model_name) or {})

        return self._call(f"searching {model_name} for {tag}={value}", search)

    def run_details(self, run_id: str, max_artifacts: int = 500) -> RunDetails:
        """Params, metrics, tags and artifact file list (up to max_artifacts) of one run."""

        def read() -> RunDetails:
            client = self.client()
            run = client.get_run(run_id)
            files: list[str] = []
            pending: list[str | None] = [None]
            while pending and len(files) < max_artifacts:
                for info in client.list_artifacts(run_id, pending.pop()):
                    if info.is_dir:
                        pending.append(info.path)
                    else:
                        files.append(info.path)
            return RunDetails(
                run_id=run_id,
                params=dict(run.data.params),
                metrics=dict(run.data.metrics),
                tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
                artifacts=tuple(sorted(files[:max_artifacts])),
            )

        return self._call(f"reading run {run_id}", read)

    def download_run_artifact(self, run_id: str, artifact_path: str, dest: Path) -> Path:
        """Download one artifact (file or folder) of a run to exactly `dest`; returns `dest`.

        Goes through this registry's own client (never mlflow's global URIs) and stages the download
        beside `dest`, so `dest` is either the complete artifact or untouched. An existing `dest` is
        replaced.
        """
        dest = Path(dest)
        artifact_path = artifact_path.strip("/")
        parent = artifact_path.rpartition("/")[0] or None

        def listing() -> list[str]:
            return [f.path for f in self.client().list_artifacts(run_id, parent)]

        present = self._call(f"listing artifacts of run {run_id}", listing)
        if artifact_path not in present:
            raise RegistryError(
                f"run {run_id} has no artifact {artifact_path!r} (in {parent or 'its root'}: "
                f"{', '.join(present) or 'nothing'})"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp,
            _env_default("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),  # no tqdm bars on stderr
        ):
            local = self._call(
                f"downloading {artifact_path} of run {run_id}",
                lambda: self.client().download_artifacts(run_id, artifact_path, tmp),
                fast=False,
            )
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            Path(local).rename(dest)
        return dest

    def attach_model_card(self, model_name: str, version: str, markdown: str) -> str | None:
        """Set `markdown` as the version's description.

        Descriptions hold at most 5000 characters; a longer card is logged whole as the artifact
        model_card.md of the version's run, and the description gets a truncated card ending in a
        pointer to it. Returns that artifact's URI (None when the card fit).
        """
        version = str(version)

        def attach() -> str | None:
            client = self.client()
            self._require_version(model_name, version)
            mv = client.get_model_version(model_name, version)
            if len(markdown) <= _DESCRIPTION_LIMIT:
                client.update_model_version(model_name, version, description=markdown)
                return None
            uri = None
            if mv.run_id:
                client.log_text(mv.run_id, markdown, MODEL_CARD_ARTIFACT)
                uri = f"runs:/{mv.run_id}/{MODEL_CARD_ARTIFACT}"
                note = f"\n\n---\n*Card truncated; the full card is the run artifact `{uri}`.*\n"
            else:
                note = "\n\n---\n*Card truncated (the version has no run to hold the full card).*\n"
            cut = markdown[: _DESCRIPTION_LIMIT - len(note) - 2].rstrip() + " …"
            client.update_model_version(model_name, version, description=cut + note)
            return uri

        return self._call(f"attaching the model card of {model_name} v{version}", attach)


# -- helpers ---------------------------------------------------------------------------------------------
def _v(version: str | None) -> str:
    return "nothing" if version is None else f"v{version}"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _literal(name: str) -> str:
    """A string literal for an MLflow search filter (both quote styles are accepted)."""
    return f'"{name}"' if "'" in name else f"'{name}'"


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / _COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _stringify_params(params: dict[str, Any]) -> dict[str, str]:
    """MLflow params are strings with a length limit (6000 in 3.17); longer values are cut and marked."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    out = {}
    for key, value in params.items():
        text = str(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            text = text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
        out[key] = text
    return out


def _metric_key(name: str) -> str:
    # MLflow metric names allow letters, digits and _-./ and spaces only ("pretrained@500" has an "@").
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


@contextmanager
def _fast_http(uri: str) -> Iterator[None]:
    """Short HTTP timeouts/retries for registry metadata calls; values the user set are kept."""
    if urlparse(uri).scheme not in ("http", "https"):
        yield
        return
    with _ENV_LOCK:
        added = [k for k in _FAST_HTTP_ENV if k not in os.environ]
        for key in added:
            os.environ[key] = _FAST_HTTP_ENV[key]
        try:
            yield
        finally:
            for key in added:
                os.environ.pop(key, None)


@contextmanager
def _env_default(key: str, value: str) -> Iterator[None]:
    """Set an environment variable for the block unless the user set it."""
    with _ENV_LOCK:
        added = key not in os.environ
        if added:
            os.environ[key] = value
        try:
            yield
        finally:
            if added:
                os.environ.pop(key, None)


@contextmanager
def _fluent_uris(uri: str) -> Iterator[None]:
    """Point mlflow's fluent API (start_run, log_model) at uri, then restore the caller's settings."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _ENV_LOCK:
        # set_tracking_uri(None) also unsets MLFLOW_TRACKING_URI, so the env is saved separately.
        saved_env = {k: os.environ.get(k) for k in _URI_ENV}
        saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved[0])
            mlflow.set_registry_uri(saved[1])
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextmanager
def _alias_lock(uri: str, model_name: str) -> Iterator[None]:
    """Serialise alias compare-and-set: within this process, and across processes and machines through
    the lock service of tasks/alias_lock.py (file, PostgreSQL advisory lock or Prefect concurrency limit)."""
    service = alias_lock.service_for(uri, model_name)
    if not service.shared and (uri, model_name) not in _UNSHARED_WARNED:
        _UNSHARED_WARNED.add((uri, model_name))
        log.warning("alias moves of %s: %s", model_name, service.describe())
    with _ALIAS_LOCK:
        try:
            with alias_lock.hold(service, uri, ledger.default_actor()):
                yield
        except alias_lock.LockUnavailable as err:
            raise RegistryError(f"{err}; nothing was moved") from err
