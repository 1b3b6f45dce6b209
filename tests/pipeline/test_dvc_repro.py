"""`dvc repro` runs the same stage functions as the flow, and leaves a clean `dvc status`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run

pytestmark = pytest.mark.pipeline
DVC = [sys.executable, "-m", "dvc"]


def test_dvc_repro_on_the_tiny_configuration(project: Path):
    repro = run([*DVC, "repro"], project)
    assert repro.returncode == 0, repro.stdout + repro.stderr
    for stage in ("prepare", "validate", "download", "train", "evaluate"):
        assert f"Running stage '{stage}'" in repro.stdout
    status = run([*DVC, "status", "--json"], project)
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout
    metrics = json.loads((project / "reports" / "evaluation" / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] == 100
    # Nothing changed, so nothing runs again; and the outputs push to the local remote.
    again = run([*DVC, "repro"], project)
    assert again.returncode == 0 and "Running stage" not in again.stdout
    push = run([*DVC, "push"], project)
    assert push.returncode == 0, push.stderr
