"""Row 16: a run on a fresh Prefect home while other processes keep every core busy.

Without PREFECT_API_URL each run starts Prefect's temporary server, which first migrates a fresh home's
database; on a loaded machine that took longer than Prefect's own start-up timeout. The run must start
and finish regardless.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import QUICK, make_project, run

CLI = [sys.executable, "-m", "flows.cli"]


@contextlib.contextmanager
def busy_cores(count: int | None = None) -> Iterator[list[subprocess.Popen]]:
    """`count` (default: one per core) processes that spin until the block ends."""
    spin = [sys.executable, "-c", "while True: pass"]
    spinners = [subprocess.Popen(spin) for _ in range(count or os.cpu_count() or 2)]
    try:
        yield spinners
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()


@pytest.mark.fault(16, "run on a fresh Prefect home with every core busy")
def test_a_run_on_a_fresh_prefect_home_finishes_while_every_core_is_busy(tmp_path: Path):
    project = make_project(tmp_path, QUICK, fresh_stores=True)  # as on a new machine
    home = tmp_path / "fresh-prefect-home"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "OMP_NUM_THREADS")}
    # Only what the entry point sets itself: the test session's own start-up timeout must not help.
    env = {k: v for k, v in env.items() if not k.startswith("PREFECT_SERVER_EPHEMERAL")}
    env["PREFECT_HOME"] = str(home)
    with busy_cores() as spinners:
        result = run([*CLI, "run", "--project", str(project)], project, env)
        assert all(proc.poll() is None for proc in spinners), "the load stopped before the run ended"
    assert result.returncode == 0, result.stderr[-3000:]
    assert (home / "prefect.db").is_file(), "the run did not use the fresh Prefect home"
    assert "is now 'champion'" in result.stdout
