"""Named fault-injection points for the reliability tests: a real process death at a chosen moment.

`TRANSFERLINE_FAULT=<point>` makes the process exit abruptly (no cleanup, like a kill -9 or an OOM kill)
when it reaches that point. Unset, a point costs one environment lookup.
"""

from __future__ import annotations

import os
import sys

ENV = "TRANSFERLINE_FAULT"
CRASH_EXIT_CODE = 137  # what a SIGKILL-ed process reports


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        print(f"transferline: fault injected at {name!r}: exiting abruptly", file=sys.stderr, flush=True)
        os._exit(CRASH_EXIT_CODE)
