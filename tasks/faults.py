"""Named fault-injection points for the reliability tests: a real process death or a real error, on cue.

- `TRANSFERLINE_FAULT=<point>` (or `<point>@N`: at the N-th time the point is reached) makes the process
  exit abruptly there (no cleanup, like a kill -9 or an OOM kill).
- `TRANSFERLINE_FAULT_TRANSIENT=<point>:N` makes the first N passes through `transient(<point>)` raise
  `InjectedFault`, as a flaky network or a busy service would, so retries are exercised for real.

Unset, a point costs one environment lookup.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

ENV = "TRANSFERLINE_FAULT"
TRANSIENT_ENV = "TRANSFERLINE_FAULT_TRANSIENT"
CRASH_EXIT_CODE = 137  # what a SIGKILL-ed process reports
_hits: Counter[str] = Counter()


class InjectedFault(RuntimeError):
    """A transient failure injected by TRANSFERLINE_FAULT_TRANSIENT."""


def armed(name: str) -> bool:
    """Whether the crash at `name` is requested (some faults prepare their damage before crashing)."""
    return os.environ.get(ENV, "").split("@")[0] == name


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec or spec.split("@")[0] != name:
        return
    _hits[name] += 1
    at = int(spec.split("@")[1]) if "@" in spec else 1
    if _hits[name] == at:
        print(f"transferline: fault injected at {name!r}: exiting abruptly", file=sys.stderr, flush=True)
        os._exit(CRASH_EXIT_CODE)


def transient(name: str) -> None:
    spec = os.environ.get(TRANSIENT_ENV, "")
    target, _, times = spec.partition(":")
    if target != name:
        return
    _hits[f"transient:{name}"] += 1
    if _hits[f"transient:{name}"] <= int(times or 1):
        raise InjectedFault(f"fault injected at {name!r} (pass {_hits[f'transient:{name}']} of {times or 1})")


def reset() -> None:
    """Forget how often each point was reached (a test process injecting the same fault twice)."""
    _hits.clear()
