"""Kill the training process for real mid-run, damage its newest checkpoint, and start again.

The restarted stage must skip the damaged checkpoint, resume from the newest intact one, finish, and
produce bit-for-bit the weights of a run that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.paths import ProjectPaths
from tests.conftest import make_project, run, set_params

EVERY = 5


def stage(project: Path, name: str) -> subprocess.CompletedProcess:
    done = run([sys.executable, "-m", f"tasks.{name}"], project)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def intact_steps(paths: ProjectPaths) -> list[Path]:
    return sorted(paths.checkpoints_dir.glob("*/step-*/COMPLETE.json"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny project with its data prepared and the base model in place (the stages before train)."""
    project = make_project(tmp_path_factory.mktemp("resume"))
    set_params(project, {"train.checkpoint_every_steps": EVERY})
    stage(project, "prepare")
    stage(project, "download")
    return project


def test_killed_training_resumes_from_last_intact_checkpoint_and_matches_an_uninterrupted_run(
    prepared, tmp_path
):
    project = prepared
    paths = ProjectPaths.at(project)

    log = (tmp_path / "killed.log").open("w")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.train"], cwd=project, env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 300
    while len(intact_steps(paths)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no cleanup, like the OOM killer
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed"
    log.close()
    markers = intact_steps(paths)
    assert len(markers) == 2
    older, newest = (m.parent for m in markers)
    assert not (paths.challenger_dir / "model.safetensors").exists()

    weights = newest / "weights.safetensors"  # damage the newest one: one byte in the tensor data
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))

    resumed = stage(project, "train")
    text = resumed.stdout + resumed.stderr
    assert (
        f"skipping checkpoint {newest.name}: weights.safetensors does not match its recorded sha256" in text
    )
    assert f"resumed from checkpoint {older.name}" in text
    meta = json.loads((paths.challenger_dir / "transferline.json").read_text())
    older_step = int(older.name.removeprefix("step-"))
    assert meta["training"]["resumed_from_step"] == older_step
    assert meta["training"]["steps"] == 51  # 3 epochs of 17 batches: none skipped, none repeated
    assert not any(paths.checkpoints_dir.iterdir()), "checkpoints of a finished run are removed"
    resumed_weights = sha256(paths.challenger_dir / "model.safetensors")

    uninterrupted = stage(project, "train")
    assert "resumed" not in uninterrupted.stdout + uninterrupted.stderr
    assert sha256(paths.challenger_dir / "model.safetensors") == resumed_weights


def test_torchrun_data_parallel_runs_the_same_loop_on_cpu(prepared):
    """Two processes under torchrun (gloo on CPU): the multi-GPU path, exercised without a GPU."""
    paths = ProjectPaths.at(prepared)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tasks.train",
    ]
    done = run(cmd, prepared)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "data parallel over 2 processes" in done.stdout + done.stderr
    meta = json.loads((paths.challenger_dir / "transferline.json").read_text())
    assert meta["training"]["steps"] == 3 * (17 // 2)  # each process: every other batch of 17, 3 epochs
    assert not any(paths.checkpoints_dir.iterdir())
