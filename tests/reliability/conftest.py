"""Fixtures of the reliability suite: the ledger every test reports to (see ledger.py)."""

from __future__ import annotations

import contextlib

import pytest

from tests.reliability.ledger import Ledger, log_path


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Ledger:
    return Ledger(log_path(), request.node.nodeid)  # the session's log, emptied by tests/conftest.py


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
        with contextlib.suppress(AssertionError), getattr(ledger, kind)(row, name):
            assert report.passed
