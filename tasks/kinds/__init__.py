"""The one table of task types: ``task.type`` of params.yaml -> the module that implements it.

Like transformers' ``SUPPORTED_TASKS``: each entry names the implementation (which says, as class attributes,
its models' transformers Auto class, its default model and its pipeline task) and the params.yaml section of
its own keys; nothing else branches on the task name. A task's module is imported when
the task is asked for, so reading the table costs nothing (the image task pulls in Pillow and torch); the
imports are written out (not importlib strings) so that tasks/stages.py, which follows a stage's imports to
find its code, counts every task module as code of the stages that use this table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.kinds.base import TaskKind
from tasks.paths import METADATA_FILE


def _text_classification() -> type:
    from tasks.kinds.text import TextClassification

    return TextClassification


def _image_classification() -> type:
    from tasks.kinds.image import ImageClassification

    return ImageClassification


def _image_options() -> type:
    from tasks.kinds.image_config import ImageConfig

    return ImageConfig


def _token_classification() -> type:
    from tasks.kinds.token import TokenClassification

    return TokenClassification


def _token_options() -> type:
    from tasks.kinds.token_config import NerConfig

    return NerConfig


@dataclass(frozen=True)
class TaskSpec:
    implementation: Callable[[], type]  # imports and returns the class implementing tasks/kinds/base.py
    options_section: str | None  # the params.yaml section with this task's own keys (None: none)
    options_type: Callable[[], type] | None = None  # imports and returns that section's typed model


TASKS: dict[str, TaskSpec] = {
    "text-classification": TaskSpec(
        implementation=_text_classification,
        options_section=None,
    ),
    "image-classification": TaskSpec(
        implementation=_image_classification,
        options_section="image",
        options_type=_image_options,
    ),
    "token-classification": TaskSpec(
        implementation=_token_classification,
        options_section="ner",
        options_type=_token_options,
    ),
}


def load_task(name: str, options: Any) -> TaskKind:
    """The task `name` configured with its section of params.yaml (`options`); ValueError for an unknown
    name, listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"task.type {name!r} is not a known task; known: {', '.join(sorted(TASKS))}")
    return TASKS[name].implementation()(options)


def task_of(cfg: Any) -> TaskKind:
    """The task a project's config names (``task.type``), with its section of params.yaml."""
    spec = TASKS[cfg.task.type]
    return load_task(cfg.task.type, getattr(cfg, spec.options_section) if spec.options_section else None)


def load_recorded(record: dict[str, Any] | None) -> TaskKind:
    """The task a saved model records (``{"type": ..., "options": {...}}`` in its transferline.json),
    with the options it was trained with; None (models saved before tasks were recorded): text."""
    record = record or {"type": "text-classification", "options": None}
    spec = TASKS[record["type"]]
    options = spec.options_type()(**record["options"]) if spec.options_type else None
    return load_task(record["type"], options)


def recorded(model_dir: Path) -> dict[str, Any]:
    """A saved model folder's METADATA_FILE ({} when it has none: a plain transformers folder)."""
    meta_file = model_dir / METADATA_FILE
    return json.loads(meta_file.read_text()) if meta_file.is_file() else {}


def task_of_model(model_dir: Path) -> TaskKind:
    """The task a saved model was trained for, with the task options it was trained with."""
    return load_recorded(recorded(model_dir).get("task"))
