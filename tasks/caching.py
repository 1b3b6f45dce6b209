"""Prefect cache policies of the pipeline's steps: a re-run whose inputs did not change skips the step.

A step's cache key covers what its dvc.yaml stage depends on: the dataset version (sha256 of the prepared
split files; for prepare, of data.source itself), the params sections the step reads (Config.digest),
the base model's sha256, the upstream outputs it reads (e.g. the challenger's weights for evaluate), and
its code (every source file of the task's package). The project folder is part of
every key, because results name paths inside it.

A cache hit must never hand back a result whose files are gone or were rewritten since (by a run with other
inputs, or by hand). So when a step completes, a stamp beside its cache record keeps a digest of the files
it wrote; a later lookup whose outputs no longer match the stamp drops the record, and the step runs again.

Results, and so the cache records, live in the project (ProjectPaths.task_results): `in_project` binds a
flow's tasks to that folder. A cached task called without it is not cached at all (its key is None),
since stamps and records would then live in different places.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from prefect.cache_policies import CachePolicy

from tasks.paths import ProjectPaths

if TYPE_CHECKING:
    import pandas as pd
    from prefect import Task
    from prefect.context import TaskRunContext
    from prefect.transactions import Transaction

log = logging.getLogger("transferline.caching")

T = TypeVar("T", bound="Task[Any, Any]")
Inputs = dict[str, Any]
STAMP_SUFFIX = ".outputs"

# (path, size, mtime, ctime, inode) -> sha256: within one process a file is hashed once per version of it
# (the challenger's weights are read by the train stamp, the evaluate key and the dvc-commit key).
_FILE_HASHES: dict[tuple[str, int, int, int, int], str] = {}


def file_digest(path: Path) -> str:
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if memo not in _FILE_HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _FILE_HASHES[memo] = digest.hexdigest()
    return _FILE_HASHES[memo]


def tree_sha256(paths: Iterable[Path | None]) -> str:
    """sha256 over the names and contents of files and folders (recursively); a missing one counts too."""
    lines = []
    for top in paths:
        if top is None:
            lines.append("none")
        elif top.is_file():
            lines.append(f"{top} {file_digest(top)}")
        elif top.is_dir():
            files = sorted(p for p in top.rglob("*") if p.is_file())
            lines.extend(f"{p} {file_digest(p)}" for p in files)
            lines.append(f"{top}/ {len(files)} files")
        else:
            lines.append(f"{top} missing")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def frame_sha256(frame: pd.DataFrame | None) -> str:
    """Content hash of a frame (e.g. the champion's training split passed to validate and drift)."""
    if frame is None:
        return "none"
    import pandas as pd

    rows = pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes()
    return hashlib.sha256(rows + repr(list(frame.columns)).encode()).hexdigest()


def code_sha256() -> str:
    """Identity of the pipeline's stage code: sha256 over every module of the tasks package."""
    package = Path(__file__).resolve().parent
    return tree_sha256(sorted(package.glob("*.py")))


def dataset_version(paths: ProjectPaths) -> str:
    """The prepared snapshot the downstream steps read (split files and manifest)."""
    return tree_sha256([paths.prepared_dir])


@dataclass
class StepCache(CachePolicy):
    """Cache key = project + `parts(inputs)` + the task module's source; hit only while outputs are intact.

    Args:
        parts: the step's inputs -> what its result depends on (hashes, params digests), as strings.
        outputs: the step's inputs -> digest of what it wrote (stamped on completion, checked on lookup).
    """

    parts: Callable[[Inputs], dict[str, str]] | None = None
    outputs: Callable[[Inputs], str] | None = None

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: Inputs, flow_parameters: Inputs, **kwargs: Any
    ) -> str | None:
        folder = results_folder(task_ctx)
        paths = inputs.get("paths")
        if folder is None or not isinstance(paths, ProjectPaths) or folder != paths.task_results:
            return None  # not bound to the project's results (see in_project): no caching
        assert self.parts is not None and self.outputs is not None
        try:
            parts = self.parts(inputs)
        except Exception as err:  # e.g. a missing data source: the step itself reports it, uncached
            log.debug("%s: not cached (%s)", task_ctx.task.name, err)
            return None
        module = Path(inspect.getsourcefile(inspect.unwrap(task_ctx.task.fn)) or "")
        # Every module of the package, not only the task's own: train's result also depends on
        # transfer.py and checkpoints.py, evaluate's on train.py. A code change re-runs every step.
        code = tree_sha256(sorted(module.parent.glob("*.py")))
        identity = {"project": str(paths.root), "code": code, **parts}
        key = f"{task_ctx.task.name}-" + hashlib.sha256(yaml.safe_dump(identity).encode()).hexdigest()
        log.debug("cache key %s from %s", key, identity)
        record, stamp = folder / key, folder / f"{key}{STAMP_SUFFIX}"
        if record.exists():
            recorded = stamp.read_text() if stamp.is_file() else None
            if recorded != self.outputs(inputs):
                log.info("%s: its outputs changed since it was cached; running it again", task_ctx.task.name)
                record.unlink(missing_ok=True)
                stamp.unlink(missing_ok=True)
        return key

    def stamp(self, txn: Transaction) -> None:
        """On-commit hook: record the digest of what the step just wrote beside its cache record."""
        from prefect.context import TaskRunContext

        ctx = TaskRunContext.get()
        folder = results_folder(ctx) if ctx else None
        if ctx is None or folder is None or txn.key is None or self.outputs is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{txn.key}{STAMP_SUFFIX}.{os.getpid()}"
        tmp.write_text(self.outputs(ctx.parameters or {}))
        tmp.replace(folder / f"{txn.key}{STAMP_SUFFIX}")


def results_folder(ctx: TaskRunContext | None) -> Path | None:
    from prefect.filesystems import LocalFileSystem

    storage = ctx.result_store.result_storage if ctx is not None else None
    if isinstance(storage, LocalFileSystem) and storage.basepath:
        return Path(storage.basepath).resolve()
    return None


def in_project(paths: ProjectPaths, *steps: T) -> tuple[T, ...]:
    """The given tasks with their results (and cache records and stamps) kept in the project."""
    bound = []
    for step in steps:
        task = step.with_options(result_storage=paths.task_results)  # a Path: local storage, no saved block
        if isinstance(step.cache_policy, StepCache):
            stamp = functools.partial(step.cache_policy.stamp)
            stamp.log_on_run = False  # type: ignore[attr-defined]  # no "Running commit hook" line per step
            task.on_commit(stamp)
        bound.append(task)
    return tuple(bound)


# -- the steps' policies -------------------------------------------------------------------------------


def _files(*pick: Callable[[ProjectPaths], Path]) -> Callable[[Inputs], str]:
    return lambda i: tree_sha256([p(i["paths"]) for p in pick])


def _prepare_parts(i: Inputs) -> dict[str, str]:
    from tasks.prepare import source_sha256

    return {"source": source_sha256(i["cfg"].source, i["paths"].root), "data": i["cfg"].model_dump_json()}


PREPARE = StepCache(parts=_prepare_parts, outputs=_files(lambda p: p.prepared_dir))

VALIDATE = StepCache(
    parts=lambda i: {
        "data": dataset_version(i["paths"]),
        "params": i["cfg"].digest("data", "validate"),
        "reference": frame_sha256(i.get("reference")),
    },
    outputs=_files(lambda p: p.validation_dir),
)

DRIFT = StepCache(
    parts=lambda i: {
        "data": dataset_version(i["paths"]),
        "params": i["cfg"].digest("data", "drift"),
        "reference": frame_sha256(i.get("reference")),
        "encoder": str(i.get("encoder_dir")),  # the base model's cache folder is named by its sha256
    },
    outputs=_files(lambda p: p.drift_dir),
)

TRAIN = StepCache(
    parts=lambda i: {
        "data": dataset_version(i["paths"]),
        "params": i["cfg"].digest("data", "train"),
        "base_model": i["base"].sha256,
    },
    outputs=_files(lambda p: p.challenger_dir),
)

EVALUATE = StepCache(
    parts=lambda i: {
        "data": dataset_version(i["paths"]),
        "params": i["cfg"].digest("data", "train", "evaluate"),
        "challenger": tree_sha256([i["paths"].challenger_dir]),
        "champion": f"{i.get('champion_version')} {tree_sha256([i.get('champion_dir')])}",
        "retention": tree_sha256([i.get("retention_file")]),
    },
    outputs=_files(lambda p: p.evaluation_dir),
)


def _gate_parts(i: Inputs) -> dict[str, str]:
    from prefect.utilities.hashing import hash_objects

    return {"evaluation": str(hash_objects(i["evaluation"])), "policy": i["policy"].model_dump_json()}


GATE = StepCache(parts=_gate_parts, outputs=_files(lambda p: p.gate_report, lambda p: p.gate_json))


def _stage_files(paths: ProjectPaths, stages: Iterable[str]) -> list[Path]:
    """Every dep and out that dvc.yaml declares for the stages (what `dvc commit` hashes)."""
    spec = yaml.safe_load((paths.root / "dvc.yaml").read_text())["stages"]
    found: set[str] = set()
    for name in stages:
        stage = spec[name]
        for group in ("deps", "outs", "metrics", "plots"):
            for item in stage.get(group, []):
                found.add(next(iter(item)) if isinstance(item, dict) else str(item))
    return [paths.root / rel for rel in sorted(found)]


def _dvc_recorded(i: Inputs) -> str:
    """What `dvc commit` of these stages left: their dvc.lock entries, and whether the cache has the outs."""
    from tasks.versioning import cache_object  # here: versioning imports this module

    paths, stages = i["paths"], i["stages"]
    lock = paths.root / "dvc.lock"
    entries = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}
    picked = {name: entries.get(name) for name in stages}
    cached = [
        cache_object(paths, out["md5"]).is_file()
        for entry in picked.values()
        for out in (entry or {}).get("outs", [])
        if out.get("md5")
    ]
    return hashlib.sha256(yaml.safe_dump({"lock": picked, "cached": cached}).encode()).hexdigest()


DVC_COMMIT = StepCache(
    parts=lambda i: {
        "stages": " ".join(i["stages"]),
        "params": i["cfg"].digest(),
        "files": tree_sha256(_stage_files(i["paths"], i["stages"])),
    },
    outputs=_dvc_recorded,
)
