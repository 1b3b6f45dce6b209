"""Throw-away servers of the scale-out set-up on loopback: `mlflow server` over a PostgreSQL store and a
Prefect server, started as infra/docker-compose.yml starts them (less auth, which
tests/reliability/test_row13_services_and_load.py covers). Each runs in its own process group, so stopping
it also ends the workers it forked. Also `transferline run` as a process whose output lines carry the time
they arrived. Used by the reliability rows 17, 18 and 21 and by bench/scaleout.py.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
STARTUP_S = 240  # a loaded 2-core box migrates both schemas slowly


class ServiceUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path
    what: str
    health: str  # the path that answers 200 once the server is ready

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def tail(self, chars: int = 3000) -> str:
        return log_tail(self.log, chars)

    def ready(self) -> Server:
        """Wait until the health path answers 200; ServiceUnavailable (with the log) if it never does."""
        if not wait_for(self.port, self.health, alive=lambda: self.proc.poll() is None):
            self.stop()
            raise ServiceUnavailable(f"{self.what} did not become healthy:\n{self.tail()}")
        return self

    def stop(self) -> None:
        """TERM the server's process group, KILL it if it lingers (a throw-away server loses nothing)."""
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def answers(port: int, path: str) -> bool:
    """Whether a server on loopback `port` answers 200 at `path`."""
    with contextlib.suppress(OSError):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        return conn.getresponse().status == 200
    return False


def wait_for(port: int, path: str, alive: Callable[[], bool] = lambda: True) -> bool:
    """Poll a server on loopback `port` until it answers 200 at `path` (True), or until `alive()` says its
    process is gone or STARTUP_S have passed (False)."""
    deadline = time.monotonic() + STARTUP_S
    while not answers(port, path):
        if not alive() or time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def log_tail(log: Path, chars: int = 3000) -> str:
    """The end of a server's log, for the message of a test that gives up on it."""
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


# transferline runs no MLflow server jobs (they serve MLflow's GenAI features); left on, every `mlflow server`
# starts two job-consumer processes that poll for work all along (infra/docker-compose.yml turns them off).
MLFLOW_SERVER_SETTINGS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_env(**extra: str) -> dict[str, str]:
    """This environment without client settings that would point a server elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def _launch(cmd: list[str], log: Path, env: dict[str, str], health: str, what: str, cwd: Path) -> Server:
    """Start a server in its own process group; call .ready() before using it."""
    port = int(cmd[cmd.index("--port") + 1])
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(proc, port, log, what, health)


def launch_mlflow(store_uri: str, folder: Path) -> Server:
    """`mlflow server` on store_uri, proxying artifacts to folder/artifacts (one worker: a 2-core box)."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(BIN / "mlflow"), "server", "--backend-store-uri", store_uri,
        "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(free_port()), "--workers", "1",
    ]  # fmt: skip
    return _launch(
        cmd, folder / "mlflow.log", server_env(**MLFLOW_SERVER_SETTINGS), "/health", "mlflow server", folder
    )


def launch_prefect(database_url: str, folder: Path, **settings: str) -> Server:
    """`prefect server start` on database_url (postgresql+asyncpg://... or sqlite+aiosqlite:///...), with
    its services (the repossessor frees the slots of dead lease holders). `settings`: PREFECT_* extras."""
    folder.mkdir(parents=True, exist_ok=True)
    env = server_env(
        PREFECT_HOME=str(folder / "prefect-home"),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=database_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        **settings,
    )
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(free_port())]
    return _launch(cmd, folder / "prefect.log", env, "/api/health", "prefect server", folder)


def start_serve(project: Path, log: Path, *options: str, env: dict[str, str] | None = None) -> Server:
    """`transferline serve` on project's champion, healthy (a verified model loaded); `options`: its flags."""
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--project", str(project), "--port", str(free_port()),
           *options]  # fmt: skip
    env = dict(os.environ) if env is None else env
    return _launch(cmd, log, env, "/health", "transferline serve", ROOT).ready()


class RunProcess:
    """One `transferline run` process; its output lines, each with the time it arrived."""

    def __init__(
        self, project: Path, *args: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()
    ) -> None:
        """`prefix`: a launcher the command runs under (one that ends by exec-ing its arguments)."""
        env = dict(os.environ if env is None else env)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "flows.cli", "run", "--project", str(project), *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        self.ended: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip()))
        self.proc.wait()
        self.ended = time.monotonic()

    def wait(self, timeout: float = 900) -> int:
        self._reader.join(timeout)
        assert self.ended is not None, f"run {self.proc.pid} did not end:\n{self.text()}"
        return self.proc.returncode

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, fragment: str) -> float | None:
        return next((at for at, line in self.lines if fragment in line), None)

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = 300) -> None:
        """Poll `predicate` while the run lives; fail with the run's output if it ends first or times out."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.ended is None, f"{what}: the run ended first:\n{self.text()}"
            assert time.monotonic() < deadline, f"timed out waiting until {what}:\n{self.text()}"
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the run's process group: the run and the temporary Prefect server it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
