"""Where the suite's subprocesses spend CPU: with this folder on PYTHONPATH, every Python process that exits
normally appends one line to $PROCESS_PROFILE (default /tmp/proc-cpu.tsv): pid, parent pid, seconds it
lived, its CPU seconds (user + system) and its command line. Processes killed by a signal write nothing.

    rm -f /tmp/proc-cpu.tsv
    PYTHONPATH=$PWD/tests/process_profile .venv/bin/python -m pytest -n 3 --dist worksteal
    sort -t$'\t' -k4 -n -r /tmp/proc-cpu.tsv | head -30

The path must be absolute: the suite starts many of its processes in other folders. Not imported by the
suite itself: Python runs it at start-up only when this folder is on PYTHONPATH.
"""

import atexit
import os
import resource
import sys
import time

_STARTED = time.monotonic()


def _record() -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    line = "\t".join(
        [
            str(os.getpid()),
            str(os.getppid()),
            f"{time.monotonic() - _STARTED:.1f}",
            f"{usage.ru_utime + usage.ru_stime:.2f}",
            " ".join(sys.argv)[:300],
        ]
    )
    try:
        with open(os.environ.get("PROCESS_PROFILE", "/tmp/proc-cpu.tsv"), "a") as out:
            out.write(line + "\n")
    except OSError:
        pass  # a profile must never fail the process it measures


atexit.register(_record)
