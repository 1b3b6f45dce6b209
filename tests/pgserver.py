"""A throw-away PostgreSQL server for integration tests: initdb into a temp dir, pg_ctl start on a free
port (socket dir in the same temp dir), createdb. Debian's `postgresql` package provides the binaries
(`make test` installs it when missing).

initdb refuses to run as root, so under root the server runs as the `postgres` system user (or, when
that user does not exist, a system user created for the purpose) through runuser. Nothing is skipped: if
the server cannot be started, the caller gets PostgresUnavailable with the server's own log.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

FALLBACK_USER = "transferline-pg"


class PostgresUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class PostgresServer:
    root: Path
    port: int
    bindir: Path
    user: str | None  # the OS user the server runs as (None: this process's user)

    def uri(self, database: str) -> str:
        # "postgres" is the superuser initdb creates (-U); trust auth on loopback only
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def createdb(self, database: str) -> str:
        _run(
            [
                str(self.bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                database,
            ]
        )
        return self.uri(database)

    def stop(self) -> None:
        subprocess.run(
            self._as_user(
                [str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"]
            ),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def _as_user(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *cmd] if self.user else cmd


def find_bindir() -> Path:
    """The newest installed PostgreSQL server's bin dir (Debian keeps them off PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) are not installed: `make test` installs Debian's "
        "postgresql package, or run `apt-get install -y --no-install-recommends postgresql`"
    )


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER])
    return FALLBACK_USER


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise PostgresUnavailable(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )


def start() -> PostgresServer:
    """A running server; call stop() when done."""
    bindir = find_bindir()
    user = _server_user()
    # Not under pytest's tmp dirs: those are 0700 root-owned, and the server user must reach its files.
    root = Path(tempfile.mkdtemp(prefix="transferline-pg-"))
    for sub in ("data", "sock"):
        (root / sub).mkdir()
    if user:
        entry = pwd.getpwnam(user)
        for path in (root, root / "data", root / "sock"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(root, _free_port(), bindir, user)
    try:
        _run(server._as_user([
            str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        ]))  # fmt: skip
        # Durability off: a test database is thrown away, and fsyncs would dominate its run time.
        options = (
            f"-p {server.port} -k {root / 'sock'} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        log = root / "server.log"
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-o", options, "-l", str(log)]
        start_cmd = server._as_user([*pg_ctl, "-w", "-t", "60", "start"])
        result = subprocess.run(start_cmd, capture_output=True, text=True, timeout=90)
        if result.returncode != 0:
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n{tail}")
    except BaseException:
        server.stop()
        raise
    return server
