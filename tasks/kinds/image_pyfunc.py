"""The logged image model as an MLflow pyfunc "model from code": a plain MLflow client loads it and predicts.

MLflow's transformers flavor cannot rebuild an architecture transformers does not ship (EfficientNet-Lite is
ours, tasks/kinds/efficientnet_lite.py), and a pickled Python object would run whatever it unpickles. So
tasks/packaging.py logs this file as the model's code (MLflow executes it at load; its last line names the
model), the transferline package as its code path (reviewed code, never ``trust_remote_code``) and the
fine-tuned safetensors folder as its artifact. Input: a column ``image`` of PNG/JPEG/... bytes or their
base64 text; output: one row per image, ``label`` and ``score``.
"""

from __future__ import annotations

import base64
import binascii
import importlib
from pathlib import Path
from typing import Any

import mlflow.models
import pandas as pd
from mlflow.pyfunc import PythonModel

IMAGE_COLUMN = "image"
MODEL_ARTIFACT = "model"  # the artifact key of the fine-tuned model folder
BATCH = 32


def image_bytes(value: Any) -> bytes:
    """An input cell as the image's bytes: bytes as they are, text as base64."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"an {IMAGE_COLUMN!r} value is neither image bytes nor base64 text: {err}") from None


def logged_io() -> tuple[pd.DataFrame, Any, list[str]]:
    """What tasks/packaging.py logs with this model: the input example MLflow predicts once, the signature
    (a column of image bytes in, one (label, score) row per image out) and the extra requirements."""
    from importlib.metadata import version

    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]),
    )
    example = pd.DataFrame({IMAGE_COLUMN: [_example_png()]})
    return example, signature, [f"pillow=={version('pillow')}", f"pandas=={version('pandas')}"]


def _example_png() -> bytes:
    """A small grey gradient as PNG bytes: the input example MLflow predicts once at logging."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


class ImageClassifier(PythonModel):
    """The fine-tuned image classifier behind mlflow.pyfunc's predict."""

    def load_context(self, context: Any) -> None:
        # by name: the registry logs this file, and every stage reaches the registry (tasks/stages.py)
        predictor = importlib.import_module("tasks.inference").Predictor
        self.predictor = predictor(Path(context.artifacts[MODEL_ARTIFACT]), 0)

    # model_input is not annotated: MLflow would read a hint as its input schema (the signature says it)
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        column = IMAGE_COLUMN if IMAGE_COLUMN in frame.columns else frame.columns[0]
        images = [image_bytes(v) for v in frame[column]]
        rows = self.predictor.kind.predict(self.predictor, images, BATCH)
        return pd.DataFrame({"label": [r["label"] for r in rows], "score": [r["score"] for r in rows]})


mlflow.models.set_model(ImageClassifier())  # what MLflow loads from this file (models from code)
