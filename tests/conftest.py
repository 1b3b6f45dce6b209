"""Shared fixtures: real Prefect (test harness), DVC repos and MLflow stores in temp dirs, offline Hub."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_BASE = pytest.StashKey[Path]()
# What a clone of the project holds that the pipeline needs (code is a dvc.yaml dependency).
PROJECT_FILES = ("dvc.yaml", "params.yaml", "tasks", "data/raw/README.md")

# The tiny configuration: a few hundred real reviews, short sequences, seconds per run.
TINY = {
    "data.max_rows": 400,
    "data.test_size": 0.25,
    "validate.min_rows_per_class": 5,
    "train.epochs": 3,
    "train.max_length": 48,
    "train.batch_size": 16,
    "gate.min_accuracy": 0.5,
    # ~260 training rows give a small vocabulary: fresh reviews cover only ~0.7-0.8 of it by chance.
    "validate.reference_min_vocab_coverage": 0.5,
}
# Even smaller, for tests where a model only has to exist (what is trained does not matter, so neither
# does the accuracy floor: a one-epoch model on 130 rows may land either side of 0.5).
QUICK = {**TINY, "data.max_rows": 200, "train.epochs": 1, "train.max_length": 32, "gate.min_accuracy": 0.0}


def pytest_configure(config: pytest.Config) -> None:
    from tasks.runtime import configure_environment

    base = Path(tempfile.mkdtemp(prefix="transferline-tests-"))
    config.stash[_BASE] = base
    # Never reach the network and never share Prefect's result cache with other runs.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["PREFECT_HOME"] = str(base / "prefect-home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("PREFECT_API_URL", None)
    configure_environment()
    if "PYTEST_XDIST_WORKER" in os.environ:
        # Parallel workers share the cores: one torch thread each, or their busy-waiting OpenMP pools
        # fight over the CPU and every step slows down many times.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    else:  # the controller (or a plain run): one reliability ledger per session, started afresh
        from tests.reliability.ledger import log_path

        log_path().unlink(missing_ok=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    base = config.stash.get(_BASE, None)
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def set_params(project: Path, updates: dict) -> None:
    """Write dotted-key updates into the project's params.yaml (a user editing the file)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in updates.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's environment first on PATH (as `make` does for users)."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def make_project(base: Path, params: dict | None = None) -> Path:
    """A fresh transferline project in base/project: git + DVC repo with a local remote, and params.yaml
    changed by `params` (dotted keys; default: the tiny configuration)."""
    proj = base / "project"
    for rel in PROJECT_FILES:
        src, dst = ROOT / rel, proj / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (
        ["git", "init", "-q"],
        [*dvc, "init", "-q"],
        [*dvc, "config", "core.analytics", "false"],
        [*dvc, "remote", "add", "-d", "local", str(base / "dvc-remote")],
        [*dvc, "remote", "modify", "local", "verify", "true"],
    ):
        result = run(cmd, proj)
        assert result.returncode == 0, result.stderr
    set_params(proj, TINY if params is None else params)
    return proj


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


# A secret no file, log, param, tag or artifact may ever contain (reliability row 14): it is in the
# environment and in a DVC remote's local config while the session's champion is trained.
CANARY = f"tl-canary-{secrets.token_hex(12)}"
CANARY_ENV = ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "HF_TOKEN", "TRANSFERLINE_TEST_SECRET")


@pytest.fixture
def quick_project(tmp_path: Path) -> Path:
    """A fresh project on the QUICK configuration: for tests where a model only has to exist."""
    return make_project(tmp_path, QUICK)


@pytest.fixture(scope="session")
def champion_project(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Path:
    """A project whose registry holds v1 as champion, trained by the real retrain flow once per session,
    with the canary secret in the environment and in `.dvc/config.local`. Tests that move its aliases put
    `champion` back on v1 when they end."""
    from flows.retrain import retrain

    project = make_project(tmp_path_factory.mktemp("champion"))
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (
        [*dvc, "remote", "add", "backup", "http://127.0.0.1:9/dvc-store"],
        [*dvc, "remote", "modify", "--local", "backup", "auth", "basic"],
        [*dvc, "remote", "modify", "--local", "backup", "user", "transferline"],
        [*dvc, "remote", "modify", "--local", "backup", "password", CANARY],
    ):
        result = run(cmd, project)
        assert result.returncode == 0, result.stderr
    saved = {key: os.environ.get(key) for key in CANARY_ENV}
    os.environ.update(dict.fromkeys(CANARY_ENV, CANARY))
    try:
        summary = retrain(project_dir=str(project))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert summary.promoted and summary.version == "1"
    return project


def cli(*argv: str) -> int:
    """Run a `transferline` command in-process through the real parser; returns its exit code."""
    from flows.cli import _parser

    args = _parser().parse_args(list(argv))
    return args._extra_handlers[args.command](args)
