"""The lock around alias moves of one registered model, held in a service every writer shares.

MLflow aliases are last-writer-wins and MLflow has no conditional update, so the registry's
compare-and-set (tasks/registry.py) is only as good as the lock around its read and its write. Which
service holds that lock follows from where the registry lives:

- ``sqlite:///...``: a flock on a file in the temp dir keyed by database and model, shared by every
  process of this host; the kernel frees it the moment its holder dies.
- ``postgresql://...``: ``pg_advisory_lock`` on a dedicated connection to the same database, shared by
  every client of that database; the server frees it when the holder's connection drops.
- ``http(s)://`` with a Prefect server (``PREFECT_API_URL``): a tracking server hides its database, so
  the Prefect server that every worker of the deployment already talks to (infra/docker-compose.yml)
  holds a global concurrency limit ``transferline-aliases-<model>`` with one slot. The slot is leased:
  the holder renews the lease while it lives, and the server frees the slot of one that died once the
  lease ran out (LEASE_S, plus up to one pass of its repossessor loop).
- anything else: no lock beyond this process. The registry logs it and ``transferline status`` shows it
  rather than pretending.

Nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import ParseResult, urlparse

if TYPE_CHECKING:
    import psycopg

FILE, POSTGRESQL, PREFECT, PROCESS = "file", "postgresql", "prefect", "process"
# How long a move waits for the lock before giving up. A Prefect lease outlives a dead holder by up to
# LEASE_S + the server's repossessor loop (15 s by default), so waiting there must outlast both.
WAIT_S = {FILE: 30.0, POSTGRESQL: 30.0, PREFECT: 120.0}
LEASE_S = 60.0  # the shortest lease the Prefect server grants; the holder renews it while it lives
LIMIT_PREFIX = "transferline-aliases-"
_BANNED = re.compile(r"[/%&<>]")  # characters Prefect refuses in a concurrency limit's name
_POLL_S = 0.05


class LockUnavailable(RuntimeError):
    """The lock could not be taken: the service is unreachable, misconfigured, or held too long."""


@dataclass(frozen=True)
class LockService:
    """Where the alias lock of one model lives (no credentials: it is printed)."""

    kind: str  # FILE | POSTGRESQL | PREFECT | PROCESS
    name: str  # the lock as its service shows it: file path, advisory key, concurrency limit name
    where: str  # the service: this host, the database, the Prefect API URL
    shared: bool  # False: moves are serialised within this process only

    def describe(self) -> str:
        """One line for the log and `transferline status`."""
        if self.kind == FILE:
            return f"file lock {self.name} (every process of this host using the same SQLite store)"
        if self.kind == POSTGRESQL:
            return f"PostgreSQL advisory lock {self.name} on {self.where} (every client of that database)"
        if self.kind == PREFECT:
            return (
                f"Prefect global concurrency limit {self.name!r} on {self.where} (every process "
                "using that Prefect server)"
            )
        return (
            f"NOT SHARED: alias moves on {self.where} are serialised within one process only; two "
            "machines promoting at once can both move the alias. Set PREFECT_API_URL to the Prefect "
            "server every worker uses (or keep the registry in PostgreSQL or SQLite)"
        )

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "description": self.describe()}


def service_for(
    tracking_uri: str, model_name: str, prefect_url: Callable[[], str | None] | None = None
) -> LockService:
    """The lock service for alias moves of `model_name` in the registry at `tracking_uri`.

    Args:
        prefect_url: returns the Prefect server every worker shares, if any (default: prefect_api_url;
            asked only for a tracking server, so SQLite and PostgreSQL stores never import Prefect).
    """
    parsed = urlparse(tracking_uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme == "sqlite":
        key = hashlib.sha256(f"{parsed.path}\0{model_name}".encode()).hexdigest()[:16]
        # Outside the project, keyed by the database path: every process of this host that uses the same
        # SQLite file agrees on it, and nothing new appears next to the database.
        path = Path(tempfile.gettempdir()) / f"transferline-registry-{key}.lock"
        return LockService(FILE, str(path), socket.gethostname(), True)
    if scheme in ("postgresql", "postgres"):
        return LockService(POSTGRESQL, str(advisory_key(model_name)), _public(parsed), True)
    api = (prefect_url or prefect_api_url)() if scheme in ("http", "https") else None
    if api:
        return LockService(PREFECT, limit_name(model_name), api, True)
    return LockService(PROCESS, "", _public(parsed), False)


def prefect_api_url() -> str | None:
    """The Prefect server of this process's settings (PREFECT_API_URL or the active profile), if any.
    Prefect's temporary server is no lock service: no other process reaches it."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def advisory_key(model_name: str) -> int:
    """The 64-bit key of model_name's PostgreSQL advisory lock (advisory keys are per database)."""
    digest = hashlib.sha256(f"transferline-aliases\0{model_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def limit_name(model_name: str) -> str:
    """The Prefect global concurrency limit of model_name: readable, and unique when characters that
    Prefect refuses had to be replaced."""
    clean = _BANNED.sub("-", model_name)
    if clean != model_name:
        clean += "-" + hashlib.sha256(model_name.encode()).hexdigest()[:8]
    return LIMIT_PREFIX + clean


@contextlib.contextmanager
def hold(service: LockService, tracking_uri: str, holder: str) -> Iterator[None]:
    """Hold the alias lock of `service` for the block; LockUnavailable when it cannot be taken in time.

    Args:
        tracking_uri: the registry's URI (PostgreSQL: the database whose advisory lock is used).
        holder: who takes it (user@host), shown to anyone who waits for it.
    """
    if service.kind == FILE:
        with _file_lock(Path(service.name)):
            yield
    elif service.kind == POSTGRESQL:
        with _advisory_lock(tracking_uri, int(service.name), holder):
            yield
    elif service.kind == PREFECT:
        with _prefect_lock(service):
            yield
    else:
        yield


# -- the services ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        deadline = time.monotonic() + WAIT_S[FILE]
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockUnavailable(f"timed out waiting for the alias lock {path}") from None
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(tracking_uri: str, key: int, holder: str) -> Iterator[None]:
    """pg_advisory_lock on a connection of its own: the server frees it when that connection ends, so a
    killed holder (its socket closed by the kernel) never keeps it; keepalives catch a vanished host."""
    import psycopg

    # The name shows in pg_stat_activity, so whoever waits can be told who holds the lock.
    app = f"transferline alias lock: {holder}"[:63]
    try:
        conn = psycopg.connect(
            _libpq_uri(tracking_uri), autocommit=True, connect_timeout=10, application_name=app,
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        )  # fmt: skip
    except psycopg.Error as err:
        raise LockUnavailable(f"cannot open a connection for the alias lock: {err}") from err
    with conn:
        try:
            # lock_timeout bounds the wait for any lock, advisory ones included
            conn.execute(
                "SELECT set_config('lock_timeout', %s, false)", (f"{int(WAIT_S[POSTGRESQL] * 1000)}ms",)
            )
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        except psycopg.errors.LockNotAvailable:
            raise LockUnavailable(
                f"timed out after {WAIT_S[POSTGRESQL]:g} s waiting for the alias lock (PostgreSQL advisory "
                f"lock {key}), held by {_advisory_holder(conn, key) or 'another session'}"
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(psycopg.Error):  # closing the connection frees it anyway
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def _advisory_holder(conn: psycopg.Connection, key: int) -> str | None:
    """application_name of the session holding advisory lock `key`, if it can be read."""
    import psycopg

    query = (
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'advisory' AND l.granted "
        "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s"  # a bigint key's two halves
    )
    with contextlib.suppress(psycopg.Error):
        row = conn.execute(query, (key,)).fetchone()
        return row[0] if row else None
    return None


@contextlib.contextmanager
def _prefect_lock(service: LockService) -> Iterator[None]:
    """One slot of a global concurrency limit, leased: the holder's process renews the lease while it
    lives; the server's repossessor frees the slot of one that died once its lease expired.

    Taken one attempt at a time (max_retries=0) with a short pause of our own between attempts: Prefect's
    own retry waits the server's Retry-After, which grows with every refusal up to 30 s, so a waiter
    could sleep through most of that after the slot came free."""
    from prefect.concurrency.sync import concurrency

    _ensure_limit(service)
    _quiet_refusals()
    deadline, pause = time.monotonic() + WAIT_S[PREFECT], _POLL_S
    with contextlib.ExitStack() as stack:
        while True:
            try:
                stack.enter_context(
                    concurrency(
                        service.name, occupy=1, strict=True, max_retries=0, lease_duration=LEASE_S,
                        # A lost renewal must not interrupt a move halfway: the move checks afterwards that
                        # the aliases hold what it wrote (Registry._apply_moves) and undoes itself otherwise.
                        raise_on_lease_renewal_failure=False,
                    )
                )  # fmt: skip
                break
            except Exception as err:  # taken (423), unreachable server, refused auth, limit deleted
                if not _taken(err):
                    raise LockUnavailable(
                        f"cannot take the alias lock {service.name!r} on the Prefect server {service.where}: "
                        f"{err}"
                    ) from err
            if time.monotonic() > deadline:
                raise LockUnavailable(
                    f"timed out after {WAIT_S[PREFECT]:g} s waiting for the alias lock: the Prefect global "
                    f"concurrency limit {service.name!r} on {service.where} stays taken "
                    f"(`prefect gcl inspect {service.name}` shows it)"
                )
            time.sleep(pause)
            pause = min(2 * pause, 0.5)
        yield


class _RefusalFilter(logging.Filter):
    """Drops the error line Prefect's acquisition service logs for each refused attempt (also a 423):
    waiting for a taken lock is expected, and any other failure reaches the caller as LockUnavailable."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        message = record.msg if isinstance(record.msg, str) else ""
        return not (message.startswith("Service %r failed to process item") and args[:1] == (_SERVICE,))


_SERVICE = "ConcurrencySlotAcquisitionWithLeaseService"
_FILTER = _RefusalFilter()


def _quiet_refusals() -> None:
    logger = logging.getLogger("prefect._internal.concurrency")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def _taken(err: BaseException) -> bool:
    """Whether an acquisition failed because the slot is taken (HTTP 423 Locked somewhere in the chain)."""
    while err is not None:
        response = getattr(err, "response", None)
        if getattr(response, "status_code", None) == 423:
            return True
        err = err.__cause__
    return False


_ENSURED: set[tuple[str, str]] = set()  # (api url, limit) known to exist with one slot, per process


def _ensure_limit(service: LockService) -> None:
    """Create the one-slot limit when missing; refuse one that someone widened or switched off."""
    if (service.where, service.name) in _ENSURED:
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            try:
                limit = client.read_global_concurrency_limit_by_name(service.name)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):  # another worker created it first
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=service.name, limit=1)
                    )
                limit = client.read_global_concurrency_limit_by_name(service.name)
    except Exception as err:
        raise LockUnavailable(
            f"cannot reach the Prefect server {service.where} that holds the alias lock: {err} "
            "(start it, or unset PREFECT_API_URL to serialise alias moves within this process only)"
        ) from err
    if limit.limit != 1 or not limit.active:
        raise LockUnavailable(
            f"the Prefect global concurrency limit {service.name!r} must be active with 1 slot (it has "
            f"{limit.limit}, active={limit.active}): `prefect gcl update {service.name} --limit 1` and "
            f"`prefect gcl enable {service.name}`"
        )
    _ENSURED.add((service.where, service.name))


# -- URIs ------------------------------------------------------------------------------------------------
def _libpq_uri(tracking_uri: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg2://...) as libpq takes it (postgresql://...)."""
    scheme, rest = tracking_uri.split("://", 1)
    return f"{scheme.split('+')[0]}://{rest}"


def _public(parsed: ParseResult) -> str:
    """scheme://host[:port]/path of a URI, without user or password."""
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.hostname or ''}{port}{parsed.path}"
