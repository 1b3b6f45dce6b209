"""Thin DVC and git adapter: record what a flow run produced, exactly as `dvc repro` would have.

The Prefect flow runs the same stage functions as dvc.yaml, in-process; afterwards ``commit_stages``
stores their outputs in the DVC cache and writes dvc.lock, so `dvc status` is clean and `dvc push`
sends the dataset snapshot and the weights to the remote. A run with overrides (`--set`, UI parameters)
must not record params it did not use: while DVC reads them, params.yaml temporarily holds the
effective values, so dvc.lock tells the truth and `dvc status` then reports that params.yaml differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import caching, faults
from tasks.config import Config, load_config
from tasks.paths import ProjectPaths
from tasks.runtime import retry_on
from tasks.stages import STAGES, dvc_files, params_digest

log = logging.getLogger("transferline.versioning")

PIPELINE_STAGES = tuple(STAGES)  # in dvc.yaml order


class VersioningError(RuntimeError):
    """DVC could not record or push the run's outputs; the message says what to check."""


@contextlib.contextmanager
def effective_params(paths: ProjectPaths, cfg: Config) -> Iterator[None]:
    """Make params.yaml show `cfg` for the duration of the block, restoring its exact bytes after."""
    original = paths.params.read_bytes()
    if load_config(paths.params) == cfg:
        yield
        return
    fd, tmp = tempfile.mkstemp(dir=paths.root, prefix=".params-", suffix=".yaml")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
    os.replace(tmp, paths.params)
    try:
        yield
    finally:
        paths.params.write_bytes(original)


class DvcLockBusy(VersioningError):
    """Another DVC command holds the repository lock (DVC has no wait option); worth retrying."""


def dvc(paths: ProjectPaths, *args: str, timeout: float = 900) -> str:
    """Run a DVC command in the project; DVC's Python API resolves targets against the process's cwd,
    so a subprocess with cwd=root is the reliable way to address a project that is not the cwd."""
    _require_repo(paths)
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=paths.root, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        if "Unable to acquire lock" in message:
            raise DvcLockBusy(f"dvc {args[0]}: repository busy: {message}")
        raise VersioningError(f"dvc {' '.join(args)} failed: {message}")
    return result.stdout


def commit_stages(paths: ProjectPaths, cfg: Config, stages: tuple[str, ...]) -> dict[str, str]:
    """`dvc commit --force` the given stages; returns {output path: DVC md5} from dvc.lock."""
    with effective_params(paths, cfg):
        dvc(paths, "commit", "--force", "--quiet", *commit_targets(paths, stages))
    return output_hashes(paths)


def commit_targets(paths: ProjectPaths, stages: tuple[str, ...]) -> tuple[str, ...]:
    """What to name to `dvc commit`: DVC rewrites dvc.lock once per target it is given, and a lock that
    lists every stage's code is seconds to rewrite, so every stage of dvc.yaml is named by the file (one
    rewrite, the same lock)."""
    return (paths.dvc_yaml.name,) if set(stages) == set(PIPELINE_STAGES) else stages


def lock_stages(paths: ProjectPaths) -> dict[str, Any]:
    """dvc.lock's stage entries ({} without a lock). It lists every dependency of every stage, so it is
    read with libyaml's parser where PyYAML has it: the pure-Python one takes a third of a second."""
    lock = paths.root / "dvc.lock"
    if not lock.is_file():
        return {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return (yaml.load(lock.read_text(), Loader=loader) or {}).get("stages") or {}


def output_hashes(paths: ProjectPaths) -> dict[str, str]:
    """{output path: md5} of every stage output recorded in dvc.lock (directories end in '.dir')."""
    hashes = {}
    for stage in lock_stages(paths).values():
        for out in stage.get("outs", []):
            hashes[out["path"]] = out.get("md5", "")
    return hashes


def _require_repo(paths: ProjectPaths) -> None:
    if not (paths.root / ".dvc").is_dir():
        raise VersioningError(
            f"{paths.root} is not a DVC repository: run `git init && dvc init` there (a clone of "
            "transferline already is one)"
        )


def _dvc_config(paths: ProjectPaths) -> Any:
    """The project's merged DVC config (repo, local, global and system levels), read by DVC's own API."""
    from dvc.config import Config, ConfigError

    _require_repo(paths)
    dvc_dir = paths.root / ".dvc"
    try:
        return Config(dvc_dir=str(dvc_dir))
    except ConfigError as err:
        raise VersioningError(f"{dvc_dir}: unreadable DVC config: {err}") from None


def default_remote(paths: ProjectPaths) -> str | None:
    """The name of the project's default DVC remote (`dvc remote default`), None when there is none."""
    return _dvc_config(paths)["core"].get("remote") or None


def cache_dir(paths: ProjectPaths) -> Path:
    """The project's DVC cache folder as DVC resolves it: `cache.dir` of its config (any level, relative
    paths taken from the config file that sets it), else .dvc/cache."""
    configured = _dvc_config(paths)["cache"].get("dir")
    return Path(configured) if configured else paths.root / ".dvc" / "cache"


def cache_objects(paths: ProjectPaths) -> Path:
    """Where the DVC cache keeps file and directory objects by md5 (``<cache>/files/md5``)."""
    from dvc.cachemgr import CacheManager
    from dvc_data.hashfile.hash import DEFAULT_ALGORITHM

    return cache_dir(paths) / CacheManager.FILES_DIR / DEFAULT_ALGORITHM


def cache_object(paths: ProjectPaths, md5: str, objects: Path | None = None) -> Path:
    """The cache path of one object (``<md5>.dir`` for a directory listing); `objects` saves a config read."""
    return (objects or cache_objects(paths)) / md5[:2] / md5[2:]


def push(paths: ProjectPaths) -> str:
    """Push cached outputs to the default remote; returns DVC's summary line."""
    if not default_remote(paths):
        raise VersioningError(
            "no default DVC remote: add one with `dvc remote add -d NAME URL` so data and weights "
            "are stored outside this machine"
        )
    faults.transient("dvc.push")
    if faults.armed("dvc.push-partial"):  # a push cut off after some objects reached the remote
        dvc(paths, "push", "prepare")
        faults.point("dvc.push-partial")
    out = dvc(paths, "push")
    return out.strip().splitlines()[-1] if out.strip() else "nothing to push"


def git_commit(root: Path) -> str:
    """HEAD's SHA, with '-dirty' when tracked files have uncommitted changes; 'unknown' outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def _dvc_recorded(i: caching.Inputs) -> str:
    """What `dvc commit` of these stages left: their dvc.lock entries, and whether the cache has the outs."""
    paths, stages = i["paths"], i["stages"]
    entries = lock_stages(paths)
    picked = {name: entries.get(name) for name in stages}
    cached = [
        cache_object(paths, out["md5"]).is_file()
        for entry in picked.values()
        for out in (entry or {}).get("outs", [])
        if out.get("md5")
    ]
    return hashlib.sha256(yaml.safe_dump({"lock": picked, "cached": cached}).encode()).hexdigest()


# The commit step's cache policy lives with the adapter, so stage code (which imports caching) never
# depends on this module.
DVC_COMMIT = caching.StepCache(
    parts=lambda i: {
        "stages": " ".join(i["stages"]),
        "params": params_digest(i["cfg"], *i["stages"]),
        "files": caching.tree_sha256(dvc_files(i["paths"], i["stages"])),
    },
    outputs=_dvc_recorded,
)


@task(
    name="dvc-commit", cache_policy=DVC_COMMIT, retries=3, retry_delay_seconds=[2, 5, 15],
    retry_condition_fn=retry_on(DvcLockBusy),
)  # fmt: skip
def commit_task(paths: ProjectPaths, cfg: Config, stages: tuple[str, ...]) -> dict[str, str]:
    return commit_stages(paths, cfg, stages)


@task(name="dvc-push", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15])
def push_task(paths: ProjectPaths) -> str:
    summary = push(paths)
    log.info("dvc push: %s", summary)
    return summary
