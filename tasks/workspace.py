"""One run per project folder: the runs of a project share its workspace, so they take turns.

A run writes ``data/prepared``, ``models/challenger``, ``reports/`` and DVC's state of its folder; two
interleaved runs would mix their files (and DVC refuses concurrent commands outright). So a run holds an
exclusive ``flock`` on ``.cache/run.lock`` (ProjectPaths.run_lock) from its start to its end:

- the kernel drops the lock when its process ends, however it ends (SIGKILL and OOM kills included), so
  a dead run never leaves the folder locked; the next run notices the description the dead one left
  behind and says that it takes over;
- the holder writes who it is (pid, host, command, start time) into the locked file, so a run that finds
  the folder busy names the one it waits for or is refused by;
- a second run waits up to ``ops.run_lock_wait_s`` (0: not at all) and is then refused with FolderBusy;
- runs in different folders never wait for each other;
- within one process the lock is re-entrant: `transferline run` takes it before its flow starts (to
  refuse cleanly, before any server starts) and the flow takes it again (deployments start the flow
  directly).

Over NFS, Linux maps ``flock`` to the server's byte-range locks, so runs on two machines sharing the folder
are serialised as well (a local lock daemon is needed for NFSv3).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO

from tasks.paths import ProjectPaths

log = logging.getLogger("transferline.workspace")
_POLL_S = 0.5
_COMMAND_LIMIT = 300
_held: dict[str, tuple[int, IO[str]]] = {}  # lock path -> (depth, open file) held by this process
_held_lock = threading.Lock()


class FolderBusy(RuntimeError):
    """Another run holds the project folder (and did not finish within the wait)."""


def describe(holder: dict | None) -> str:
    """How messages name a run: pid, host, start time and command."""
    if not holder:
        return "another run (it has not written its description yet)"
    return (
        f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
        f"`{holder.get('command')}`"
    )


def read_holder(paths: ProjectPaths) -> dict | None:
    """The description the holder (or a run that died holding it) left in the lock file, if any."""
    try:
        text = paths.run_lock.read_text()
    except OSError:
        return None
    try:
        value = json.loads(text) if text.strip() else None
    except ValueError:  # being written right now
        return None
    return value if isinstance(value, dict) else None


@contextlib.contextmanager
def exclusive(paths: ProjectPaths, wait_s: float, say: Callable[[str], None] = log.warning) -> Iterator[None]:
    """Hold the project folder for the block (re-entrant within this process).

    Args:
        wait_s: how long to wait for a run that holds it (0: refuse at once).
        say: where the one "waiting for ..." and "taking over from a dead run" messages go.
    Raises:
        FolderBusy: another run still holds the folder after wait_s; the message names it.
    """
    key = str(paths.run_lock)
    with _held_lock:
        depth = _held[key][0] if key in _held else 0
        if depth:
            _held[key] = (depth + 1, _held[key][1])
    if depth:
        try:
            yield
        finally:
            _release(key)
        return
    handle = _acquire(paths, wait_s, say)
    with _held_lock:
        _held[key] = (1, handle)
    try:
        yield
    finally:
        _release(key)


def _acquire(paths: ProjectPaths, wait_s: float, say: Callable[[str], None]) -> IO[str]:
    paths.run_lock.parent.mkdir(parents=True, exist_ok=True)
    handle = paths.run_lock.open("a+")
    deadline, told = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = read_holder(paths)
            if time.monotonic() >= deadline:
                handle.close()
                raise FolderBusy(
                    f"another run is using the project folder {paths.root}: {describe(holder)}. "
                    + (f"Waited {wait_s:g} s. " if wait_s > 0 else "")
                    + "Runs of one folder share data/prepared, models/challenger, reports/ and DVC's state, "
                    "so they take turns: wait for it (--set ops.run_lock_wait_s=SECONDS), or run in "
                    "another clone of the project"
                ) from None
            if not told:
                say(f"waiting up to {wait_s:g} s for the run in {paths.root} to finish: {describe(holder)}")
                told = True
            time.sleep(_POLL_S)
    left_behind = read_holder(paths)
    if left_behind:  # a clean release empties the file: this run died holding the folder
        say(
            f"the previous run in {paths.root} ended without releasing it ({describe(left_behind)}): it was "
            "killed or crashed; its lock went with its process, and this run takes over. Its outputs may be "
            "half-written; this run rewrites every stage it needs"
        )
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_me()))
    handle.flush()
    return handle


def _release(key: str) -> None:
    with _held_lock:
        depth, handle = _held[key]
        if depth > 1:
            _held[key] = (depth - 1, handle)
            return
        del _held[key]
    handle.seek(0)
    handle.truncate()  # empty: released cleanly (a run that dies leaves its description behind)
    handle.flush()
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def _me() -> dict:
    command = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) if sys.argv else "python"
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command[:_COMMAND_LIMIT],
    }
