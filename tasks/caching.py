"""Prefect cache policies of the pipeline's steps: a re-run whose inputs did not change skips the step.

A stage's cache key is what tasks/stages.py declares for it, as dvc.yaml does: the params it reads
(Config.digest of its keys), the files it reads (their content), and its code (its module and every
module of tasks/ it imports); prepare adds the identity of data.source, which may live outside the
project. The project folder is part of every key, because results name paths inside it.

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
from tasks.stages import CODE_ROOT, STAGES, code_files, params_digest, stage_code

if TYPE_CHECKING:
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


def code_sha256(*stages: str, root: Path = CODE_ROOT) -> str:
    """Identity of the named stages' code (every stage's when none are named; see stages.stage_code)."""
    return files_sha256(stage_code(*stages, root=root), root)


def files_sha256(files: Iterable[str], root: Path) -> str:
    """sha256 over "relative path, content hash" lines: two copies of the same code get the same hash."""
    lines = "".join(f"{rel} {file_digest(root / rel)}\n" for rel in files)
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass
class StepCache(CachePolicy):
    """Cache key = project + code + `key_parts(inputs)`; a hit only while the step's outputs are intact.

    Args:
        stage: the tasks/stages.py stage the step runs: its code, params, reads and writes make the key
            and the stamp. None for a step that is no stage; then `parts` and `outputs` say it all.
        parts: the step's inputs -> what else its result depends on, as strings.
        outputs: the step's inputs -> digest of what it wrote (stamped on completion, checked on lookup).
    """

    stage: str | None = None
    parts: Callable[[Inputs], dict[str, str]] | None = None
    outputs: Callable[[Inputs], str] | None = None

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: Inputs, flow_parameters: Inputs, **kwargs: Any
    ) -> str | None:
        folder = results_folder(task_ctx)
        paths = inputs.get("paths")
        if folder is None or not isinstance(paths, ProjectPaths) or folder != paths.task_results:
            return None  # not bound to the project's results (see in_project): no caching
        try:
            parts = self.key_parts(inputs)
        except Exception as err:  # e.g. a missing data source: the step itself reports it, uncached
            log.debug("%s: not cached (%s)", task_ctx.task.name, err)
            return None
        module = STAGES[self.stage].module if self.stage else inspect.unwrap(task_ctx.task.fn).__module__
        identity = {"project": str(paths.root), "code": files_sha256(code_files(module), CODE_ROOT), **parts}
        key = f"{task_ctx.task.name}-" + hashlib.sha256(yaml.safe_dump(identity).encode()).hexdigest()
        log.debug("cache key %s from %s", key, identity)
        record, stamp = folder / key, folder / f"{key}{STAMP_SUFFIX}"
        if record.exists():
            recorded = stamp.read_text() if stamp.is_file() else None
            if recorded != self.written(inputs):
                log.info("%s: its outputs changed since it was cached; running it again", task_ctx.task.name)
                record.unlink(missing_ok=True)
                stamp.unlink(missing_ok=True)
        return key

    def key_parts(self, inputs: Inputs) -> dict[str, str]:
        """What the result depends on besides code: a stage's params and the content of what it reads."""
        extra = self.parts(inputs) if self.parts is not None else {}
        if self.stage is None:
            return extra
        paths = inputs["paths"]
        reads = {paths.rel(p): tree_sha256([p]) for p in STAGES[self.stage].reads(paths)}
        return {"params": params_digest(inputs["cfg"], self.stage), **reads, **extra}

    def written(self, inputs: Inputs) -> str:
        """Digest of what the step wrote: a stage's outs, metrics and plots."""
        if self.stage is not None:
            return tree_sha256(STAGES[self.stage].writes(inputs["paths"]))
        assert self.outputs is not None
        return self.outputs(inputs)

    def stamp(self, txn: Transaction) -> None:
        """On-commit hook: record the digest of what the step just wrote beside its cache record."""
        from prefect.context import TaskRunContext

        ctx = TaskRunContext.get()
        folder = results_folder(ctx) if ctx else None
        if ctx is None or folder is None or txn.key is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{txn.key}{STAMP_SUFFIX}.{os.getpid()}"
        tmp.write_text(self.written(ctx.parameters or {}))
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


def _source_identity(i: Inputs) -> dict[str, str]:
    """data.source may live outside data/raw (the packaged sample, an absolute path, a Hub dataset)."""
    from tasks.kinds import task_of

    return {"source": task_of(i["cfg"]).source_identity(i["cfg"].data, i["paths"].root)}


PREPARE = StepCache(stage="prepare", parts=_source_identity)
VALIDATE = StepCache(stage="validate")
DRIFT = StepCache(stage="drift")
TRAIN = StepCache(stage="train")
EVALUATE = StepCache(stage="evaluate")
GATE = StepCache(stage="gate")
