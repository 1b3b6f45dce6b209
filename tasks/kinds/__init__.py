"""The one table of task types: ``task.type`` of params.yaml -> the module that implements it.

Like transformers' ``SUPPORTED_TASKS``: each entry names the implementation (which says, as class attributes,
its models' transformers Auto class, its default model and its pipeline task) and the params.yaml section of
its own keys; nothing else branches on the task name. A task's module is imported when
the task is asked for, so reading the table costs nothing (the image task pulls in Pillow and torch); the
imports are written out (not importlib strings) so that tasks/stages.py, which follows a stage's imports to
find its code, counts every task module as code of the stages that use this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasks.kinds.base import TaskKind


def _image_classification() -> type:
    from tasks.kinds.image import ImageClassification

    return ImageClassification


@dataclass(frozen=True)
class TaskSpec:
    implementation: Callable[[], type]  # imports and returns the class implementing tasks/kinds/base.py
    options_section: str | None  # the params.yaml section with this task's own keys (None: none)


TASKS: dict[str, TaskSpec] = {
    "image-classification": TaskSpec(
        implementation=_image_classification,
        options_section="image",
    ),
}


def load_task(name: str, options: Any) -> TaskKind:
    """The task `name` configured with its section of params.yaml (`options`); ValueError for an unknown
    name, listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"task.type {name!r} is not a known task; known: {', '.join(sorted(TASKS))}")
    return TASKS[name].implementation()(options)
