"""Row 2: one byte flipped in a DVC-stored object of the data source; training must never start.

- In the local cache: `dvc checkout` restores the damaged bytes without complaint (DVC does not re-hash
  cache objects on checkout, dvc #9641), so the pipeline's own check must catch it: prepare compares the
  source's md5 with its `.dvc` record and refuses with the mismatch.
- On the remote (which has `verify true`): a fresh `dvc pull` refuses the object, nothing damaged reaches
  the workspace, and the run stops asking for the data.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run, set_params
from tests.pipeline.test_retrain_flow import model_name, real_reviews, registry

pytestmark = pytest.mark.pipeline
DVC = [sys.executable, "-m", "dvc"]
SOURCE = "data/raw/reviews.csv"


@pytest.fixture
def tracked(project: Path) -> tuple[Path, str]:
    """The project with its source added to DVC and pushed; returns (project, the source's md5)."""
    real_reviews(240).to_csv(project / SOURCE, index=False)
    for cmd in (["add", SOURCE], ["push"]):
        done = run([*DVC, *cmd], project)
        assert done.returncode == 0, done.stderr
    set_params(
        project,
        {
            "data.source": SOURCE,
            "data.text_column": "text",
            "data.label_column": "label",
            "data.max_rows": None,
        },
    )
    return project, yaml.safe_load((project / f"{SOURCE}.dvc").read_text())["outs"][0]["md5"]


def flip_byte(path: Path) -> None:
    path.chmod(0o644)  # DVC stores objects read-only
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def assert_nothing_trained(project: Path) -> None:
    assert not (project / "models" / "challenger").exists(), "training started"
    assert registry(project).list_versions(model_name(project)) == []


def test_flipped_byte_in_the_local_cache_stops_the_run_with_a_hash_mismatch(tracked, prefect_server, ledger):
    from flows.retrain import retrain
    from tasks.prepare import DataSourceError, file_md5

    project, md5 = tracked
    with ledger.fault(2, "one byte flipped in the local DVC cache object of the data source"):
        flip_byte(project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:])
        (project / SOURCE).unlink()
        restored = run([*DVC, "checkout", f"{SOURCE}.dvc"], project)
        assert restored.returncode == 0, restored.stderr  # DVC itself does not notice
        damaged = file_md5(project / SOURCE)
        assert damaged != md5
        with pytest.raises(DataSourceError, match=rf"md5 {damaged} != {md5}"):
            retrain(project_dir=str(project))
        assert_nothing_trained(project)


def test_flipped_byte_on_the_remote_is_refused_by_a_fresh_pull(tracked, prefect_server, ledger):
    from flows.retrain import retrain
    from tasks.prepare import DataSourceError

    project, md5 = tracked
    with ledger.fault(2, "one byte flipped in the DVC remote's object of the data source"):
        flip_byte(project.parent / "dvc-remote" / "files" / "md5" / md5[:2] / md5[2:])
        shutil.rmtree(project / ".dvc" / "cache")  # a fresh clone: nothing local
        (project / SOURCE).unlink()
        pulled = run([*DVC, "pull"], project)
        assert pulled.returncode != 0 and md5 in pulled.stderr, pulled.stderr
        assert not (project / SOURCE).exists(), "the damaged object reached the workspace"
        with pytest.raises(DataSourceError, match="dvc pull"):
            retrain(project_dir=str(project))
        assert_nothing_trained(project)
