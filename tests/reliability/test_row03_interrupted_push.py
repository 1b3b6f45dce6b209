"""Row 3: `dvc push` interrupted after part of the run's objects reached the remote.

The fault point `dvc.push-partial` makes the real `transferline run` push the prepared data only and then
exit abruptly (what a killed process or a dropped connection leaves: a remote holding part of a run, dvc
#4343). Nothing may be registered from that run; the re-run completes the push, and a fresh clone (only
what git holds: dvc.yaml, dvc.lock, params.yaml, .dvc/config) pulls byte-identical data and weights.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import cli, run
from tests.pipeline.test_retrain_flow import model_name, registry

pytestmark = pytest.mark.pipeline
DVC = [sys.executable, "-m", "dvc"]
OUTPUTS = ("data/prepared", "models/challenger", "models/base.json")


def relative_hashes(root: Path) -> dict[str, str]:
    from tests.reliability.ledger import hashes

    return {str(Path(k).relative_to(root)): v for k, v in hashes([root / o for o in OUTPUTS]).items()}


def test_interrupted_push_then_rerun_then_a_fresh_clone_pulls_identical_files(
    quick_project: Path, prefect_server, ledger, tmp_path: Path
):
    from prefect.settings import PREFECT_API_URL

    from tasks.faults import CRASH_EXIT_CODE
    from tests.reliability.ledger import lost

    project = quick_project
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    command = [sys.executable, "-m", "flows.cli", "run", "--project", str(project)]
    remote = project.parent / "dvc-remote"
    with ledger.fault(3, "dvc push cut off after part of the run's objects reached the remote"):
        crashed = run(command, project, env={**env, "TRANSFERLINE_FAULT": "dvc.push-partial"})
        assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-2000:]
        partial = {p for p in remote.rglob("*") if p.is_file()}
        assert partial, "nothing reached the remote before the cut"
        missing = run([*DVC, "status", "--cloud"], project)
        assert "new:" in missing.stdout and "models/challenger" in missing.stdout, missing.stdout
        assert registry(project).list_versions(model_name(project)) == [], "a half-pushed run was registered"

        assert cli("run", "--project", str(project)) == 0  # the re-run, in this process
        assert partial < {p for p in remote.rglob("*") if p.is_file()}
        assert registry(project).get_alias(model_name(project), "champion").version == "1"

        clone = tmp_path / "clone"
        clone.mkdir()
        for rel in ("dvc.yaml", "dvc.lock", "params.yaml"):
            shutil.copy2(project / rel, clone / rel)
        for cmd in (["git", "init", "-q"], [*DVC, "init", "-q"]):
            assert run(cmd, clone).returncode == 0
        shutil.copy2(project / ".dvc" / "config", clone / ".dvc" / "config")
        pulled = run([*DVC, "pull"], clone)
        assert pulled.returncode == 0, pulled.stderr
        original, copy = relative_hashes(project), relative_hashes(clone)
        assert any(k.startswith("models/challenger/") for k in original)
        data_lost = lost(original, copy)
        ledger.figure(3, data_lost=data_lost)
        assert copy == original
