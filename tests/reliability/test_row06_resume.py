"""Row 6: kill the training process for real, mid-run and in the middle of a checkpoint save.

- Killed while writing a checkpoint (files written, no completeness marker yet): the next run ignores the
  half-written folder, resumes from the last complete checkpoint and loses at most the save interval.
- SIGKILLed mid-run and the newest checkpoint then damaged: the restarted stage skips it, resumes from the
  newest intact one, finishes, and produces bit-for-bit the weights of a run that was never interrupted.
- The same loop under torchrun (2 CPU processes), the multi-GPU path.

The runs that are killed are stage processes; the runs after them call the same stage function in the
test's process, as a restarted `python -m tasks.train` would, without importing the stack again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.config import load_config
from tasks.paths import ProjectPaths
from tasks.train import run_train  # imported with Prefect before a test captures logs: Prefect resets them
from tests.conftest import make_project, run, set_params

EVERY = 5


def stage(project: Path, name: str) -> subprocess.CompletedProcess:
    done = run([sys.executable, "-m", f"tasks.{name}"], project)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def train_here(project: Path) -> None:
    """The train stage in this process, as `python -m tasks.train` runs it in the project: for the runs that
    only have to start and finish (each stage process spends most of its time importing the stack)."""
    run_train(ProjectPaths.at(project), load_config(project / "params.yaml"))


def batches(project: Path) -> int:
    """Batches in one epoch of the prepared training split."""
    import pandas as pd

    rows = len(pd.read_parquet(ProjectPaths.at(project).prepared_dir / "train.parquet"))
    return math.ceil(rows / load_config(project / "params.yaml").train.batch_size)


def checkpoint_steps(per_epoch: int, epochs: int = 3) -> list[int]:
    """The steps training saves at: every EVERY steps inside an epoch, and each epoch's end."""
    inside = {s for s in range(EVERY, per_epoch * epochs, EVERY) if s % per_epoch}
    return sorted(inside | {per_epoch * e for e in range(1, epochs + 1)})


def intact_steps(paths: ProjectPaths) -> list[Path]:
    return sorted(paths.checkpoints_dir.glob("*/step-*/COMPLETE.json"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny project with its data prepared and the base model in place (the stages before train)."""
    project = make_project(tmp_path_factory.mktemp("resume"))
    # The tiny configuration's epochs on half its rows, in shorter sequences: each test trains two or three
    # times, and what is checked is the loop, not the model.
    set_params(project, {"train.checkpoint_every_steps": EVERY, "train.max_length": 32, "data.max_rows": 200})
    stage(project, "prepare")
    stage(project, "download")
    return project


def test_killed_while_saving_a_checkpoint_resumes_from_the_last_complete_one(prepared, ledger):
    from tasks.faults import CRASH_EXIT_CODE

    paths = ProjectPaths.at(prepared)
    with ledger.fault(6, f"training process killed while writing its 3rd checkpoint (every {EVERY} steps)"):
        crashed = run(
            [sys.executable, "-m", "tasks.train"], prepared,
            env={**os.environ, "TRANSFERLINE_FAULT": "train.checkpoint-partial@3"},
        )  # fmt: skip
        assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-2000:]
        partial = sorted(paths.checkpoints_dir.glob("*/.tmp-*"))
        assert len(partial) == 1 and not (partial[0] / "COMPLETE.json").exists()
        crash_step = int(partial[0].name.split("step-")[1].split("-")[0])
        per_epoch = batches(prepared)
        first, second, third = checkpoint_steps(per_epoch)[:3]
        assert [int(m.parent.name.removeprefix("step-")) for m in intact_steps(paths)] == [first, second]
        assert crash_step == third

        train_here(prepared)
        meta = json.loads((paths.challenger_dir / "transferline.json").read_text())
        resumed_from = meta["training"]["resumed_from_step"]
        assert resumed_from == second, meta["training"]
        assert meta["training"]["steps"] == 3 * per_epoch
        lost = crash_step - resumed_from
        assert 0 <= lost <= EVERY
        assert not any(paths.checkpoints_dir.iterdir()), "the half-written folder is cleaned up"
        ledger.figure(6, steps_lost_on_resume=lost)
    shutil.rmtree(paths.challenger_dir)  # the next test starts from a project that has not trained


def test_killed_training_resumes_from_last_intact_checkpoint_and_matches_an_uninterrupted_run(
    prepared, tmp_path, ledger, caplog
):
    with ledger.fault(6, "training SIGKILLed mid-run, then its newest checkpoint corrupted (1 byte)"):
        resume_after_kill_and_corruption(prepared, tmp_path, caplog)


def resume_after_kill_and_corruption(project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
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

    with caplog.at_level(logging.INFO, logger="transferline"):
        train_here(project)
    text = caplog.text
    assert (
        f"skipping checkpoint {newest.name}: weights.safetensors does not match its recorded sha256" in text
    )
    assert f"resumed from checkpoint {older.name}" in text
    meta = json.loads((paths.challenger_dir / "transferline.json").read_text())
    older_step = int(older.name.removeprefix("step-"))
    assert meta["training"]["resumed_from_step"] == older_step
    assert meta["training"]["steps"] == 3 * batches(project)  # 3 epochs: none skipped, none repeated
    assert not any(paths.checkpoints_dir.iterdir()), "checkpoints of a finished run are removed"
    resumed_weights = sha256(paths.challenger_dir / "model.safetensors")

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="transferline"):
        train_here(project)
    assert "resumed" not in caplog.text
    assert sha256(paths.challenger_dir / "model.safetensors") == resumed_weights


def test_torchrun_data_parallel_runs_the_same_loop_on_cpu(prepared):  # not a fault: the same code path
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
    assert meta["training"]["steps"] == 3 * (batches(prepared) // 2)  # each process: every other batch
    assert not any(paths.checkpoints_dir.iterdir())
