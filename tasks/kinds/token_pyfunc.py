"""The logged token-classification model as an MLflow pyfunc "model from code": a plain MLflow client loads
it and gets entity spans for raw text.

No transformers pipeline answers spans as serving does (words split on whitespace, each word's tag read at
its first sub-token, offsets into the original string), so tasks/packaging.py logs this file as the model's
code (MLflow executes it at load; its last line names the model), the transferline package as its code path
and the fine-tuned safetensors folder as its artifact. Input: raw texts (a list of strings, or a column
``text``); output: per text, its entities ``{type, text, start, end, score}`` (tasks/kinds/token_spans.py).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import mlflow.models
import pandas as pd
from mlflow.pyfunc import PythonModel

TEXT_COLUMN = "text"
MODEL_ARTIFACT = "model"  # the artifact key of the fine-tuned model folder
BATCH = 32
# What MLflow predicts once when the model is logged: a model that cannot predict is never registered.
INPUT_EXAMPLE = ["Ada Lovelace met Charles Babbage in London .", "nothing to see here"]


def texts_of(model_input: Any) -> list[str]:
    """The raw texts of a pyfunc input: a string, a list or Series of strings, or a frame (its ``text``
    column, else its first)."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        column = TEXT_COLUMN if TEXT_COLUMN in model_input.columns else model_input.columns[0]
        model_input = model_input[column]
    return [str(text) for text in model_input]


def logged_io() -> tuple[list[str], Any, list[str]]:
    """What tasks/packaging.py logs with this model: the input example MLflow predicts once, the signature
    (raw texts in; the spans out are lists of objects, which a column schema does not describe) and the
    extra requirements."""
    from importlib.metadata import version

    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return (
        list(INPUT_EXAMPLE),
        ModelSignature(inputs=Schema([ColSpec("string")])),
        [f"pandas=={version('pandas')}"],
    )


class EntityTagger(PythonModel):
    """The fine-tuned token classifier behind mlflow.pyfunc's predict."""

    def load_context(self, context: Any) -> None:
        # by name: the registry logs this file, and every stage reaches the registry (tasks/stages.py)
        predictor = importlib.import_module("tasks.inference").Predictor
        self.predictor = predictor(Path(context.artifacts[MODEL_ARTIFACT]), 0)

    # model_input is not annotated: MLflow would read a hint as its input schema (the signature says it)
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> list[list[dict]]:
        predict_spans = importlib.import_module("tasks.kinds.token_spans").predict_spans

        return predict_spans(self.predictor, texts_of(model_input), BATCH)


mlflow.models.set_model(EntityTagger())  # what MLflow loads from this file (models from code)
