"""A pytest plugin that writes each test's wall time and CPU time (its own process, and the children it
waited for) to one TSV file per worker: where the suite's CPU goes, on a machine where CPU is the limit.

    CPU_PROFILE_DIR=/tmp/suite-cpu .venv/bin/python -m pytest -n 2 -p tests.cpu_profile
    sort -t$'\t' -k3 -n -r /tmp/suite-cpu/*.tsv | head     # by own CPU; -k4: by children's CPU

Session and module fixtures count toward the first test that uses them; a server is counted when it is
reaped, so a long-lived one lands on whichever test stops it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    before, started = os.times(), time.monotonic()
    yield
    after, wall = os.times(), time.monotonic() - started
    own = (after.user - before.user) + (after.system - before.system)
    children = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    out = Path(os.environ.get("CPU_PROFILE_DIR", "cpu-profile"))
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.tsv").open("a") as fh:
        fh.write(f"{item.nodeid}\t{wall:.1f}\t{own:.1f}\t{children:.1f}\n")
