"""The pipeline's stages, declared once: the params each reads, the files it reads and writes, its code.

dvc.yaml is generated from ``STAGES`` (``python -m tasks.stages --write``; ``--check`` and
tests/unit/test_stages.py fail when the two differ), and the rest is derived from it too: the Prefect
steps' cache keys (tasks/caching.py), the checkpoint identity of training (tasks/train.py) and the params
and code hashes a registered version carries (tasks/promote.py). So `dvc repro` and the flow re-run a
stage for the same reasons.

A stage's code is its module plus every module of the package it imports, directly or through another
(read from the sources with `ast`; imports inside functions count, ``if TYPE_CHECKING:`` blocks do not):
editing a module that no stage imports, such as serve.py, re-runs nothing.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tasks.paths import ProjectPaths

if TYPE_CHECKING:
    from tasks.config import Config

PACKAGE = "tasks"
CODE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the running package


@dataclass(frozen=True)
class Out:
    """A file or folder a stage writes: a ProjectPaths property, and its options in dvc.yaml."""

    path: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One stage, run as ``python -m tasks.<name>``; the flow calls the same module's functions.

    Args:
        params: the params.yaml keys it reads: sections (``train``) or dotted keys (``data.labels``).
        deps: what it reads (ProjectPaths properties): DVC's deps, and part of its cache key.
        after: stages that must have succeeded first. DVC can order stages only through files, so their
            outputs become deps in dvc.yaml; the stage does not read them, so its cache key leaves them out.
        outs, metrics, plots: what it writes.
        always_changed: what it reads lives outside the project (the registry), so DVC runs it every time.
    """

    name: str
    params: tuple[str, ...]
    deps: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    outs: tuple[Out, ...] = ()
    metrics: tuple[Out, ...] = ()
    plots: tuple[Out, ...] = ()
    always_changed: bool = False

    @property
    def module(self) -> str:
        return f"{PACKAGE}.{self.name}"

    def reads(self, paths: ProjectPaths) -> list[Path]:
        return [getattr(paths, name) for name in self.deps]

    def writes(self, paths: ProjectPaths) -> list[Path]:
        return [getattr(paths, out.path) for out in (*self.outs, *self.metrics, *self.plots)]


_CONFUSION_PLOT = {"template": "confusion", "x": "predicted", "y": "actual"}

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            "prepare", params=("task", "data", "image", "ner"), deps=("raw_dir",), outs=(Out("prepared_dir"),)
        ),
        Stage("download", params=("model",), outs=(Out("base_manifest"),)),
        Stage(
            "champion",
            params=("registry.model_name",),
            # Only the manifest is an output. The champion's weights and data snapshot stay where the
            # registry download put them (.cache/registry/, once per version): the registry keeps them
            # already, and a copy of every champion in DVC's cache would only grow it. `cache: false`
            # keeps the manifest itself out of the cache as well: it is a pointer, re-resolved each run.
            outs=(Out("champion_manifest", {"cache": False}),),
            always_changed=True,
        ),
        Stage(
            "validate",
            params=("task", "data.labels", "image", "ner", "validate"),
            deps=("prepared_dir", "champion_manifest"),
            outs=(Out("validation_dir"),),
        ),
        Stage(
            "drift",
            params=("task", "data.labels", "image", "ner", "drift"),
            deps=("prepared_dir", "base_manifest", "champion_manifest"),
            outs=(Out("drift_dir"),),
        ),
        Stage(
            "train",
            params=("task", "data.labels", "image", "ner", "train"),
            deps=("prepared_dir", "base_manifest"),
            after=("validate", "drift"),  # bad data or blocking drift stop the run before training
            outs=(Out("challenger_dir"),),
        ),
        Stage(
            "evaluate",
            params=("task", "data.labels", "image", "ner", "train.max_length", "evaluate"),
            deps=("prepared_dir", "challenger_dir", "champion_manifest"),
            outs=(Out("evaluation_file"),),
            metrics=(Out("metrics_file"),),
            plots=(Out("predictions_file", _CONFUSION_PLOT), Out("confusion_png")),
        ),
        Stage(
            "gate", params=("gate",), deps=("evaluation_file",), outs=(Out("gate_report"), Out("gate_json"))
        ),
    )
}


# -- params ----------------------------------------------------------------------------------------------
def params_keys(*names: str) -> tuple[str, ...]:
    """The params the named stages read (every stage's when none are named), leaving out a dotted key
    whose section is listed too."""
    keys = {key for name in (names or tuple(STAGES)) for key in STAGES[name].params}
    return tuple(sorted(k for k in keys if not any(k.startswith(f"{other}.") for other in keys)))


def params_digest(cfg: Config, *names: str) -> str:
    """sha256 of the params the named stages read (every stage's when none are named)."""
    return cfg.digest(*params_keys(*names))


# -- code ------------------------------------------------------------------------------------------------
def stage_code(*names: str, root: Path = CODE_ROOT) -> list[str]:
    """The code of the named stages (every stage's when none are named), relative to `root`."""
    return code_files(*(STAGES[name].module for name in (names or tuple(STAGES))), root=root)


def code_files(*modules: str, root: Path = CODE_ROOT) -> list[str]:
    """Source files of the modules and of every package module they import, transitively.

    Args:
        modules: dotted names, e.g. ``tasks.train``.
        root: the folder holding the package.

    Returns:
        Paths relative to `root`, sorted, e.g. ``["tasks/config.py", ..., "tasks/train.py"]``.
    """
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        source = _source(module, root)
        if source is None:
            raise ValueError(f"{module}: no such module under {root}")
        seen[module] = source
        st = source.stat()
        todo.extend(_imports(str(source), st.st_mtime_ns, st.st_size, module, str(root)))
    return sorted(path.relative_to(root).as_posix() for path in seen.values())


def _source(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.parent / f"{base.name}.py", base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=512)
def _imports(source: str, mtime_ns: int, size: int, module: str, root: str) -> frozenset[str]:
    """The package modules one source file imports at run time (keyed on its mtime and size: re-read
    when the file changes)."""
    path, top = Path(source), Path(root)
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_bytes(), filename=source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, path)
            # `from tasks import caching` imports a module; `from tasks.train import fine_tune` a name.
            names = [f"{base}.{a.name}" if _source(f"{base}.{a.name}", top) else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == PACKAGE and _source(n, top) is not None)
    return frozenset(found)


def _absolute(node: ast.ImportFrom, module: str, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below `node`, except inside ``if TYPE_CHECKING:`` (imports for type hints only)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield stmt
                yield from _runtime_nodes(stmt)
            continue
        yield child
        yield from _runtime_nodes(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


# -- dvc.yaml --------------------------------------------------------------------------------------------
def dvc_deps(stage: Stage, paths: ProjectPaths, root: Path = CODE_ROOT) -> list[Path]:
    """What dvc.yaml lists as the stage's deps: its code, what it reads, the outputs of its `after`."""
    code = [paths.root / rel for rel in stage_code(stage.name, root=root)]
    ordered = [p for name in stage.after for p in STAGES[name].writes(paths)]
    return [*code, *stage.reads(paths), *ordered]


def dvc_files(paths: ProjectPaths, names: tuple[str, ...]) -> list[Path]:
    """Every dep and output of the named stages: what `dvc commit` hashes for them."""
    found = {p for name in names for p in (*dvc_deps(STAGES[name], paths), *STAGES[name].writes(paths))}
    return sorted(found)


HEADER = """\
# The pipeline's architecture, generated from the table in tasks/stages.py: edit it there and run
# `python -m tasks.stages --write` (tests/unit/test_stages.py fails while the two differ).
# Each stage is one module of tasks/, run here as `python -m tasks.<stage>` and called in-process by the
# Prefect flow (flows/retrain.py). It declares only the params it reads, and as code its module and every
# module of tasks/ that module imports. Paths are those of tasks/paths.py.
# champion asks the MLflow registry which version holds the `champion` alias (always_changed: DVC cannot
# see the registry); validate, drift and evaluate compare this run with it, and gate decides. Promotion
# moves registry aliases, so it is a flow step only (`transferline run`), never a stage.
"""


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # lists indented under their key, as people write dvc.yaml


def _entry(stage: Stage, root: Path) -> dict[str, Any]:
    paths = ProjectPaths(Path("/"))  # only the names relative to the project are wanted

    def listed(outs: tuple[Out, ...]) -> list[Any]:
        names = [(paths.rel(getattr(paths, out.path)), out.options) for out in outs]
        return [{name: dict(options)} if options else name for name, options in names]

    entry: dict[str, Any] = {"cmd": f"python -m {stage.module}"}
    if stage.always_changed:
        entry["always_changed"] = True
    entry["deps"] = [paths.rel(p) for p in dvc_deps(stage, paths, root)]
    entry["params"] = list(stage.params)
    for group in ("outs", "metrics", "plots"):
        if getattr(stage, group):
            entry[group] = listed(getattr(stage, group))
    return entry


def render(root: Path = CODE_ROOT) -> str:
    """dvc.yaml as the table describes it, for the package under `root`."""
    blocks = [
        yaml.dump({name: _entry(stage, root)}, Dumper=_Dumper, sort_keys=False, width=110)
        for name, stage in STAGES.items()
    ]
    return HEADER + "stages:\n" + "\n".join(textwrap.indent(block, "  ") for block in blocks)


def main(argv: list[str] | None = None) -> int:
    """``python -m tasks.stages --check | --write`` from the project root."""
    parser = argparse.ArgumentParser(prog="python -m tasks.stages", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="exit 1 when dvc.yaml differs from the table")
    action.add_argument("--write", action="store_true", help="write dvc.yaml from the table")
    args = parser.parse_args(argv)
    paths = ProjectPaths.at(".")
    wanted = render(paths.root)
    if args.write:
        paths.dvc_yaml.write_text(wanted, encoding="utf-8")
        print(f"wrote {paths.rel(paths.dvc_yaml)} ({len(STAGES)} stages)")
        return 0
    current = paths.dvc_yaml.read_text(encoding="utf-8") if paths.dvc_yaml.is_file() else ""
    if current == wanted:
        print(f"{paths.rel(paths.dvc_yaml)} matches tasks/stages.py")
        return 0
    diff = difflib.unified_diff(current.splitlines(True), wanted.splitlines(True), "dvc.yaml", "the table")
    sys.stderr.write("".join(diff))
    print("dvc.yaml differs from tasks/stages.py: run `python -m tasks.stages --write`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
