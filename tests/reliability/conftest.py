"""Fixtures of the reliability suite: the ledger every test reports to (see ledger.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.conftest import QUICK, make_project
from tests.reliability.ledger import Ledger, log_path

_STARTED = pytest.StashKey[bool]()


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Ledger:
    path = log_path()
    # one log per pytest session: the first test to ask for it starts it afresh
    if not request.config.stash.get(_STARTED, False):
        path.unlink(missing_ok=True)
        request.config.stash[_STARTED] = True
    return Ledger(path, request.node.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Tests marked `fault(row, what)` / `bad_input(row, what)` are one ledger entry each: survived or
    rejected when the test passed. (Tests with several injections use the `ledger` fixture instead.)"""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call":
        return
    for kind in ("fault", "bad_input"):
        marker = item.get_closest_marker(kind)
        if marker is None:
            continue
        row, *what = marker.args
        name = (
            what[0]
            if what
            else getattr(item, "originalname", item.name).removeprefix("test_").replace("_", " ")
        )
        if hasattr(item, "callspec"):
            name = f"{name} [{item.callspec.id}]"
        ledger = Ledger(log_path(), item.nodeid)
        if not item.config.stash.get(_STARTED, False):
            log_path().unlink(missing_ok=True)
            item.config.stash[_STARTED] = True
        with contextlib.suppress(AssertionError), getattr(ledger, kind)(row, name):
            assert report.passed


@pytest.fixture
def quick_project(tmp_path: Path) -> Path:
    """A fresh project on the QUICK configuration: for faults where a model only has to exist."""
    return make_project(tmp_path, QUICK)
