"""One run per project folder (tasks/workspace.py), with real processes holding real locks.

A holder is a separate Python process that takes the folder and reports it; the test process then tries
the same folder. The end-to-end case (two `transferline run` in one folder, the holder SIGKILLed) is
reliability row 18 (tests/reliability/test_row18_same_folder_runs.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.paths import ProjectPaths
from tasks.workspace import FolderBusy, exclusive, read_holder

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from tasks.paths import ProjectPaths
from tasks.workspace import exclusive
with exclusive(ProjectPaths.at(sys.argv[1]), 0):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def start_holder(folder: Path, hold_s: float = 120.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), str(hold_s), "--marker"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def folder(tmp_path: Path) -> ProjectPaths:
    return ProjectPaths.at(tmp_path / "project")


def test_a_second_run_is_refused_at_once_with_the_holder_named(folder: ProjectPaths):
    holder = start_holder(folder.root)
    try:
        started = time.monotonic()
        with pytest.raises(FolderBusy) as err, exclusive(folder, 0):
            pytest.fail("entered a folder another process holds")
        assert time.monotonic() - started < 2
        message = str(err.value)
        assert f"pid {holder.pid} on " in message and "--marker" in message  # who, and what it runs
        assert "ops.run_lock_wait_s" in message  # how to wait instead
    finally:
        holder.kill()
        holder.wait()


def test_a_second_run_waits_for_the_first_and_says_so(folder: ProjectPaths):
    holder = start_holder(folder.root, hold_s=1.5)
    said: list[str] = []
    started = time.monotonic()
    with exclusive(folder, 60, say=said.append):
        waited = time.monotonic() - started
        assert read_holder(folder)["pid"] == os.getpid()
    holder.wait(timeout=30)
    assert holder.returncode == 0 and 0.5 < waited < 30
    assert len(said) == 1 and said[0].startswith("waiting up to 60 s") and f"pid {holder.pid}" in said[0]
    assert read_holder(folder) is None  # released cleanly: the description is gone


def test_waiting_ends_in_a_refusal_after_the_timeout(folder: ProjectPaths):
    holder = start_holder(folder.root)
    try:
        started = time.monotonic()
        with pytest.raises(FolderBusy, match=r"Waited 1 s"), exclusive(folder, 1, say=lambda m: None):
            pass
        assert 0.9 < time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()


def test_a_sigkilled_holder_never_leaves_the_folder_locked(folder: ProjectPaths):
    holder = start_holder(folder.root)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    said: list[str] = []
    started = time.monotonic()
    with exclusive(folder, 0, say=said.append):
        assert time.monotonic() - started < 2  # no stale lock, no waiting
        assert read_holder(folder)["pid"] == os.getpid()
    assert len(said) == 1 and "ended without releasing it" in said[0] and f"pid {holder.pid}" in said[0]


def test_the_lock_is_reentrant_within_a_process_and_folders_are_independent(tmp_path: Path):
    one, two = ProjectPaths.at(tmp_path / "one"), ProjectPaths.at(tmp_path / "two")
    holder = start_holder(two.root)  # another process holds `two`: `one` must not care
    try:
        with exclusive(one, 0), exclusive(one, 0):  # the CLI, then the flow it starts
            assert read_holder(one)["pid"] == os.getpid()
        assert read_holder(one) is None  # released once the outer block ends
        with pytest.raises(FolderBusy):
            exclusive(two, 0).__enter__()
    finally:
        holder.kill()
        holder.wait()


def test_threads_of_one_process_share_its_hold(folder: ProjectPaths):
    """Re-entrancy is per process: a flow's task threads never wait for the run that started them."""
    entered = threading.Event()

    def task() -> None:
        with exclusive(folder, 0):
            entered.set()

    with exclusive(folder, 0):
        thread = threading.Thread(target=task)
        thread.start()
        thread.join(timeout=10)
        assert entered.is_set()
    assert read_holder(folder) is None
