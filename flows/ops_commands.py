"""`transferline up` and `transferline down`: a local Prefect server, the deployments and a worker.

`up` starts `prefect server start` (SQLite in the project's .prefect/, which is also its PREFECT_HOME),
waits until the API answers, creates the work pool and registers the deployments of flows/deployments.py,
then starts a worker for the pool. Both processes run in the background; their PIDs and logs are kept in
.prefect/. `down` stops exactly those processes (by the recorded PIDs), worker first.

flows/cli.py hosts the commands: ``add_commands(sub)`` adds the parsers and returns {name: handler}; a
handler takes the parsed Namespace and returns an Exit code (0 ok, 2 bad params.yaml, 5 Prefect failed).
`up --set KEY=VALUE` overrides params.yaml as `run --set` does: for the ops settings it reads itself and,
as their `overrides` default, for every run the deployments start.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from flows.cli_common import Exit, Handler, error, overrides, project_options, settings, settings_options
from tasks.config import ConfigError, OpsConfig
from tasks.paths import ProjectPaths

SERVER, WORKER = "server", "worker"
HOST = "127.0.0.1"  # the server is for this machine; put a reverse proxy in front to share it

UP_EPILOG = """\
what runs afterwards: the retraining on the ops.schedule cron (default nightly), the data-watch every
ops.data_watch_interval_s seconds (it retrains only when data.source changed), and any run started from
the UI: Deployments -> retrain/transferline -> Run -> Custom run, a form with the dataset, base model,
strategy, epochs and gate mode (empty fields keep params.yaml's values).
"""


def add_commands(sub: argparse._SubParsersAction) -> dict[str, Handler]:
    """Add `up` and `down` to the CLI's subparsers; returns their handlers."""
    up = sub.add_parser(
        "up",
        help="Start a local Prefect server (UI), register the deployments and start a worker.",
        description="Start a local Prefect server (SQLite in .prefect/), register the scheduled "
        "retraining and the data-watch deployments on a process work pool, and start a worker for it.",
        epilog=UP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[settings_options()],
    )
    sub.add_parser(
        "down",
        help="Stop the Prefect server and worker that `transferline up` started.",
        description="Stop the Prefect server and worker that `transferline up` started (their PIDs are "
        "in .prefect/); the database, and so the run history, stays.",
        parents=[project_options()],  # reads no settings: it stops what `up` recorded
    )
    up.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the server (default 120)"
    )
    return {"up": cmd_up, "down": cmd_down}


def api_url(ops: OpsConfig) -> str:
    return f"http://{HOST}:{ops.port}/api"


def ops_env(paths: ProjectPaths, ops: OpsConfig) -> dict[str, str]:
    """The environment of the server, the worker and so of every flow run the worker starts."""
    return {
        **os.environ,
        "PREFECT_HOME": str(paths.prefect_home),
        "PREFECT_API_URL": api_url(ops),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def pid_file(paths: ProjectPaths, name: str) -> Path:
    return paths.prefect_home / f"{name}.pid"


def log_file(paths: ProjectPaths, name: str) -> Path:
    return paths.prefect_home / f"{name}.log"


def running_pid(paths: ProjectPaths, name: str) -> int | None:
    """The PID recorded for `name` if that process still runs and is a Prefect process (not a reused PID)."""
    try:
        pid = int(pid_file(paths, name).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"prefect" in cmdline else None


def start(paths: ProjectPaths, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`python -m prefect ARGS` in the background (own session, so `down` can stop its children too)."""
    paths.prefect_home.mkdir(parents=True, exist_ok=True)
    with log_file(paths, name).open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", *args],
            cwd=paths.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file(paths, name).write_text(f"{proc.pid}\n")
    return proc


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.3)
    return False


def stop(paths: ProjectPaths, name: str, grace: float = 30.0) -> bool:
    """SIGTERM the recorded process group, SIGKILL after `grace` seconds; True if something was stopped."""
    pid = running_pid(paths, name)
    pid_file(paths, name).unlink(missing_ok=True)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and not _zombie(pid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def cmd_up(args: argparse.Namespace) -> int:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import DeploymentError, register

    try:
        paths, cfg = settings(args)
    except ConfigError as err:
        return error(err, Exit.BAD_INPUT)
    ops = cfg.ops
    url, env = api_url(ops), ops_env(paths, ops)
    server = None
    if running_pid(paths, SERVER) is None:
        if healthy(url):
            return error(
                f"port {ops.port} already serves another Prefect API; set ops.port (or --set ops.port=N)",
                Exit.BACKEND,
            )
        server = start(paths, SERVER, ["server", "start", "--host", HOST, "--port", str(ops.port)], env)
        print(
            f"starting the Prefect server on {url} (SQLite in {paths.rel(paths.prefect_home)}/) ...",
            flush=True,
        )
    if not wait_healthy(url, server, args.timeout):
        stop(paths, SERVER)
        return error(
            f"the Prefect server did not come up; its log:\n{_tail(log_file(paths, SERVER))}", Exit.BACKEND
        )
    try:
        # deploy() prints a table per deployment; the summary below says the same once
        with temporary_settings(updates={PREFECT_API_URL: url}), contextlib.redirect_stdout(io.StringIO()):
            names = register(paths, ops, overrides=overrides(args))
    except (DeploymentError, OSError, RuntimeError, ValueError) as err:
        return error(f"registering the deployments failed: {err}", Exit.BACKEND)
    if running_pid(paths, WORKER) is None:
        start(paths, WORKER, ["worker", "start", "--pool", ops.work_pool, "--type", "process"], env)
    ui = url.removesuffix("/api")
    print(
        f"\nPrefect UI:   {ui}\n"
        f"deployments:  {', '.join(names)} (work pool {ops.work_pool!r}, worker running)\n"
        f"schedule:     retrain at cron {ops.schedule!r} ({ops.timezone}); data-watch every "
        f"{ops.data_watch_interval_s} s\n"
        f"run now:      the UI's Deployments page -> retrain/transferline -> Run -> Custom run\n"
        f"              or PREFECT_API_URL={url} prefect deployment run retrain/transferline -p epochs=1\n"
        f"logs:         {paths.rel(log_file(paths, SERVER))}, {paths.rel(log_file(paths, WORKER))}\n"
        f"stop:         transferline down   (or make down)"
    )
    return Exit.OK


def cmd_down(args: argparse.Namespace) -> int:
    paths = ProjectPaths.at(args.project)
    stopped = [name for name in (WORKER, SERVER) if stop(paths, name)]
    print(
        f"stopped the Prefect {' and '.join(stopped)}"
        if stopped
        else "nothing to stop: `transferline up` is not running"
    )
    return Exit.OK
