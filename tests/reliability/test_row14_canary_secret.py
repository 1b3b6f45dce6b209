"""Row 14: a canary secret never leaves the places it was put.

The session's champion (tests/conftest.py `champion_project`) is trained by the real flow with the canary
in the environment (AWS, MLflow, Hugging Face and a custom variable) and as a DVC remote's password in
`.dvc/config.local`. Every byte the run left behind is searched: the project folder (MLflow's SQLite store
and artifacts, reports, models, dvc.lock, params.yaml, the git-tracked `.dvc/config`), the DVC remote, and
Prefect's logs, artifacts and flow-run parameters read back through its API.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CANARY

pytestmark = pytest.mark.pipeline


def files_containing(root: Path, needle: bytes, allowed: set[Path]) -> list[str]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p not in allowed):
        if needle in path.read_bytes():
            found.append(str(path.relative_to(root.parent)))
    return found


def prefect_records_containing(needle: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import LogSort

    found = []
    with get_client(sync_client=True) as client:
        offset = 0
        while batch := client.read_logs(limit=200, offset=offset, sort=LogSort.TIMESTAMP_ASC):
            found += [f"prefect log: {log.message[:80]}" for log in batch if needle in log.message]
            offset += len(batch)
        found += [f"prefect artifact {a.key}" for a in client.read_artifacts() if needle in str(a.data)]
        for run in client.read_flow_runs(limit=200):
            if needle in json.dumps(run.parameters, default=str):
                found.append(f"prefect flow-run parameters of {run.name}")
    return found


def test_canary_secret_appears_in_no_param_tag_artifact_or_log(champion_project: Path, ledger):
    from tasks.paths import ProjectPaths
    from tasks.registry import Registry

    with ledger.fault(14, "canary secret in 4 environment variables and a DVC remote's local config"):
        config_local = champion_project / ".dvc" / "config.local"
        assert CANARY in config_local.read_text()  # it really was there for the run
        needle = CANARY.encode()
        leaks = files_containing(champion_project, needle, {config_local})
        leaks += files_containing(champion_project.parent / "dvc-remote", needle, set())
        leaks += prefect_records_containing(CANARY)
        reg = Registry.for_project(ProjectPaths.at(champion_project))
        client = reg.client()
        for version in client.search_model_versions():
            run = client.get_run(version.run_id)
            if CANARY in json.dumps([run.data.params, run.data.tags, version.tags]):
                leaks.append(f"MLflow params/tags of version {version.version}")
        ledger.figure(14, canary_leaks=len(leaks))
        assert leaks == [], leaks
        # the run did log things: the search looked at real records, not at an empty store
        assert (champion_project / "mlflow.db").stat().st_size > 0 and any(
            (champion_project / "mlartifacts").rglob("model.safetensors")
        )
