"""Shared fixtures: a real Prefect server, DVC repos and MLflow stores in temp dirs, offline Hub."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests import services

ROOT = Path(__file__).resolve().parents[1]
_BASE = pytest.StashKey[Path]()
_SHARED_PREFECT = pytest.StashKey[services.Server]()
# "PORT LOG" of the Prefect server the xdist controller started for its workers.
SHARED_PREFECT_ENV = "TRANSFERLINE_TESTS_PREFECT_SERVER"
# Services the session's flows never need: nothing is scheduled or run by a worker on this server.
SHARED_PREFECT_SETTINGS = {
    f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in ("SCHEDULER", "LATE_RUNS", "FOREMAN")
}
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
    # The lowest 4 layers fixed and cached, the top 2 adapting at a rate to match: a third of the compute of
    # all six adapting, and a model that clearly learns from ~260 rows.
    "train.freeze_layers": 4,
    "train.learning_rate": 3.0e-4,
    "gate.min_accuracy": 0.5,
    # Data Docs rendering is GX's slowest step; the tests that read the HTML switch it back on.
    "validate.data_docs": False,
    # The latency measurement as shipped times 150 single requests: a tenth of a tiny run. Fewer still
    # give a figure; the tests that judge the measurement itself use the shipped values.
    "evaluate.latency_inputs": 10,
    "evaluate.latency_windows": 2,
    # ~260 training rows give a small vocabulary: fresh reviews cover only ~0.7-0.8 of it by chance.
    "validate.reference_min_vocab_coverage": 0.5,
    # Every run with a champion embeds both sides for the embedding-drift test (a warning as shipped): 64
    # texts a side still run it, at a fifth of the encoder's work. tests/unit/test_drift.py judges the test.
    "drift.sample_rows": 64,
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
    # Bytecode caches on, whatever the environment says (container images often set
    # PYTHONDONTWRITEBYTECODE): otherwise every worker rewrites the tests' asserts at collection and every
    # process a test starts compiles tasks/ again. They land in __pycache__ folders, which git ignores.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    configure_environment()
    if "PYTEST_XDIST_WORKER" in os.environ:
        # Parallel workers share the cores: one torch thread each, or their busy-waiting OpenMP pools
        # fight over the CPU and every step slows down many times.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    else:  # the controller (or a plain run): one reliability ledger per session, started afresh
        from tests.reliability.ledger import log_path

        log_path().unlink(missing_ok=True)
        if config.getoption("numprocesses", None):  # the xdist controller, before it starts its workers
            config.stash[_SHARED_PREFECT] = _launch_shared_prefect(base / "prefect-server")


def _launch_shared_prefect(folder: Path) -> services.Server:
    """The Prefect server every xdist worker of this session talks to, as a team's workers share one: one
    schema migration and one set of idle services, not one per worker. Started here without waiting for
    it (the workers start meanwhile); the `prefect_server` fixture waits until it answers."""
    database = f"sqlite+aiosqlite:///{folder / 'prefect.db'}"
    server = services.launch_prefect(database, folder, **SHARED_PREFECT_SETTINGS)
    os.environ[SHARED_PREFECT_ENV] = f"{server.port} {server.log}"
    return server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the long modules first and spread over the workers (tests/scheduling.py)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:  # not an xdist worker (a worker's own `dist` option always reads "no")
        return
    from tests.scheduling import arrange, load, module_of

    by_id = {item.nodeid: item for item in items}
    together = {module_of(item.nodeid) for item in items if "champion_project" in item.fixturenames}
    order = arrange(list(by_id), load(), int(workerinput["workercount"]), together)
    items[:] = [by_id[nodeid] for nodeid in order]


_FAILED_TMP = pytest.StashKey[set[Path]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Note the tmp_path of every failed test: the folders a failed run keeps (pytest_sessionfinish)."""
    outcome = yield
    funcargs = getattr(item, "funcargs", {})
    if outcome.get_result().failed and "tmp_path" in funcargs:
        item.config.stash.setdefault(_FAILED_TMP, set()).add(Path(funcargs["tmp_path"]).resolve())


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Keep only failed tests' folders. pytest's "failed" retention keeps every fixture's folder as well
    once a test fails (a trained project per module: gigabytes), and xdist workers without a failure keep
    theirs too; those go here."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    if session.config.getoption("numprocesses", None) and not hasattr(session.config, "workerinput"):
        return  # the xdist controller: each worker keeps its own failed tests' folders
    kept = session.config.stash.get(_FAILED_TMP, set())
    root = factory.getbasetemp().resolve()
    for child in root.iterdir():
        if child.is_dir() and not any(path.is_relative_to(child) for path in kept):
            shutil.rmtree(child, ignore_errors=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    shared = config.stash.get(_SHARED_PREFECT, None)
    if shared is not None:
        shared.stop()
    base = config.stash.get(_BASE, None)
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server for flows run in the test and for every `transferline` process the test
    starts: its URL is exported, so those processes talk to it instead of each starting and migrating a
    temporary server of its own (seconds of CPU a process). Under xdist it is the controller's server,
    shared by all workers; in a plain run, Prefect's test harness. Tests about the temporary server or
    about having no server say so by leaving PREFECT_API_URL out of the child's environment."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    shared = os.environ.get(SHARED_PREFECT_ENV)
    if shared:
        port, log = shared.split(" ", 1)
        if not services.wait_for(int(port), "/api/health"):
            tail = services.log_tail(Path(log))
            raise services.ServiceUnavailable(f"the session's Prefect server did not become healthy:\n{tail}")
        harness = temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{port}/api"})
    else:
        harness = prefect_test_harness(server_startup_timeout=120)
    with harness:
        os.environ["PREFECT_API_URL"] = str(get_current_settings().api.url)
        try:
            yield
        finally:
            os.environ.pop("PREFECT_API_URL", None)


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


_TEMPLATES: dict[str, Path] = {}


def _template() -> Path:
    """A git + DVC repository made by the real commands once per process, copied by every `make_project`.

    Its default DVC remote is the relative path ``../dvc-remote`` (DVC resolves it against .dvc/), so each
    copy pushes to the `dvc-remote` folder beside it. Creating the repository costs four DVC processes;
    copying it costs none."""
    if "repo" not in _TEMPLATES:
        holder = Path(tempfile.mkdtemp(prefix="transferline-template-"))
        atexit.register(shutil.rmtree, holder, ignore_errors=True)
        repo = holder / "project"
        repo.mkdir()
        dvc = [sys.executable, "-m", "dvc"]
        for cmd in (
            ["git", "init", "-q"],
            [*dvc, "init", "-q"],
            [*dvc, "config", "core.analytics", "false"],
            [*dvc, "remote", "add", "-d", "local", "../dvc-remote"],
            [*dvc, "remote", "modify", "local", "verify", "true"],
        ):
            result = run(cmd, repo)
            assert result.returncode == 0, result.stderr
        _TEMPLATES["repo"] = repo
    return _TEMPLATES["repo"]


def _mlflow_store() -> Path:
    """An empty MLflow SQLite store, its schema created by MLflow once per process (a fresh store runs
    every migration: seconds per project)."""
    if "mlflow" not in _TEMPLATES:
        from mlflow import MlflowClient

        db = _template().parent / "mlflow.db"
        MlflowClient(f"sqlite:///{db}").search_experiments()
        _TEMPLATES["mlflow"] = db
    return _TEMPLATES["mlflow"]


def make_project(base: Path, params: dict | None = None, fresh_stores: bool = False) -> Path:
    """A fresh transferline project in base/project: git + DVC repo with a local remote (base/dvc-remote),
    and params.yaml changed by `params` (dotted keys; default: the tiny configuration).

    The MLflow store starts as a copy of an empty one, unless `fresh_stores`: then MLflow creates it on the
    first run, as on a new machine."""
    proj = base / "project"
    shutil.copytree(_template(), proj, symlinks=True)
    for rel in PROJECT_FILES:
        src, dst = ROOT / rel, proj / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    if not fresh_stores:
        shutil.copy2(_mlflow_store(), proj / "mlflow.db")
    set_params(proj, TINY if params is None else params)
    return proj


@pytest.fixture
def project(tmp_path: Path, prefect_server) -> Path:
    return make_project(tmp_path)


@pytest.fixture
def bare_project(tmp_path: Path, prefect_server) -> Path:
    """A fresh tiny project with no MLflow store yet: for tests that check what creates one."""
    return make_project(tmp_path, fresh_stores=True)


# A secret no file, log, param, tag or artifact may ever contain (reliability row 14): it is in the
# environment and in a DVC remote's local config while the session's champion is trained.
CANARY = f"tl-canary-{secrets.token_hex(12)}"
CANARY_ENV = ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "HF_TOKEN", "TRANSFERLINE_TEST_SECRET")


@pytest.fixture
def quick_project(tmp_path: Path, prefect_server) -> Path:
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
