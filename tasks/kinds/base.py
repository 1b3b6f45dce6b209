"""The task interface: what one task type (text, image, token classification) provides to the stages.

The stages (prepare, validate, drift, train, evaluate, serve, scoring, packaging), the flow, the gate, the
registry and the CLI are written once; everything that depends on what an example *is* sits behind this
interface, one module per task (tasks/kinds/<task>.py), named in one table (tasks/kinds/__init__.py).
docs/design/tasks.md says which code of each stage moves behind which member, and
tests/unit/test_image_kind.py checks that every task in the table provides all of them.

Shapes: ``inputs`` is what ``collate`` returns, the keyword arguments of the model's forward pass
(text and tokens: input_ids and attention_mask, (B, T); images: pixel_values, (B, 3, H, W)). ``hidden`` is
what ``bottom`` returns (text and tokens: (B, T, H) hidden states with their mask; images: (B, C, h, w)
feature maps, or (B, C) pooled features at the top depth). Logits are (B, C), one row per example, or
(B, T, C), one row per position (token classification); then the targets (``encode``'s ``.labels``) are
(N, T') with IGNORE_INDEX where no loss reads, and training, scoring and the cache put per-position logits
back in order padded to the longest example (``tasks.inference.assemble``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from transformers import PreTrainedModel

    from tasks.config import DataConfig, DriftConfig, TrainConfig, ValidateConfig
    from tasks.drift_checks import DriftCheck
    from tasks.evaluate import EvalResult
    from tasks.validate import ValidationReport


# A target position that no loss or metric reads (torch's cross_entropy ignores it by default): token
# classification gives it to a word's later sub-tokens, special tokens and padding.
IGNORE_INDEX = -100


class RequestError(ValueError):
    """A request the service refuses: ``status`` is the HTTP 4xx code, ``detail`` says what to fix."""

    def __init__(self, status: int, detail: str | list) -> None:
        super().__init__(str(detail))
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Blocks:
    """The parts of a model the strategies freeze, group and cache; the head is the rest."""

    stem: Any  # a module (or a ModuleList of the stem's modules)
    layers: list[Any]  # early -> late

    def head_parameters(self, model: PreTrainedModel) -> list[torch.nn.Parameter]:
        inside = {id(p) for module in (self.stem, *self.layers) for p in module.parameters()}
        return [p for p in model.parameters() if id(p) not in inside]


def class_names(config: Any) -> list[str]:
    """A model config's class names in class-id order (its ``id2label``): the order of its logits."""
    return [config.id2label[i] for i in range(len(config.id2label))]


def with_new_head(auto_class: str, base: Path, names: list[str], pretrained: bool = True) -> PreTrainedModel:
    """`base`'s encoder under a freshly initialised head over `names` (the transformers Auto class
    `auto_class`; id2label and label2id saved in its config). pretrained=False gives the same architecture
    with every weight randomly initialised: the baseline that shows what the pretrained weights are worth."""
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "classifier MISSING" load report is expected: it is the new head
    hf_logging.disable_progress_bar()
    auto = getattr(transformers, auto_class)
    label_maps = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
    }
    if not pretrained:
        return auto.from_config(transformers.AutoConfig.from_pretrained(base, **label_maps))
    return auto.from_pretrained(base, **label_maps, use_safetensors=True)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The share of examples whose highest logit is their class: a classifier's validation score."""
    return float((logits.argmax(-1) == targets).float().mean())


@runtime_checkable
class TaskKind(Protocol):
    """One task type. Attributes name it; methods are grouped by the stage that calls them."""

    name: str  # the task.type of params.yaml, e.g. "image-classification"
    input_column: str  # the prepared splits' column holding each example's input ("text", "image")
    key_column: str  # the column (or derived key) that says two rows are the same example
    auto_model: str  # the transformers Auto class of its models
    pipeline_task: str  # the transformers/MLflow pipeline task of the logged model
    mlflow_flavor: str  # how tasks/packaging.py logs its models: "transformers" or "pyfunc" (from code)
    pyfunc_code: str | None  # flavor "pyfunc": the module logged as the model's code (tasks/packaging.py)
    default_model: str  # model.source when the project names none
    description: str  # what the model does, for the model card ("text classification into ...")
    validation_metric: str  # what training keeps the best epoch by, as logs name it ("accuracy", "entity F1")
    intended_use: str  # the model card's intended use and limits, in one sentence of its own

    # -- prepare: a source -> the prepared snapshot --------------------------------------------------------
    def read_source(self, data: DataConfig, root: Path) -> Any:
        """Read ``data.source`` (rows with input and label, its identity, its display name); refuse a source
        that cannot be read faithfully, keep bad values for validation to name."""
        ...

    def prepare(self, source: Any, data: DataConfig) -> tuple[dict[str, pd.DataFrame], int]:
        """Normalise, drop repeated examples (by ``key``), subsample and split: (splits, rows dropped)."""
        ...

    def write_snapshot(self, splits: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, pd.DataFrame]:
        """Write the splits (and whatever files they point at) into the snapshot folder DVC versions."""
        ...

    def key(self, frame: pd.DataFrame) -> pd.Series:
        """Per row, the key that says when two rows are the same example (dedupe, split order, leakage)."""
        ...

    def source_identity(self, data: DataConfig, root: Path) -> str:
        """What prepare records as ``source_sha256``, without preparing (the data watch compares it)."""
        ...

    # -- validate: the GX suite, alone and against the champion's data -----------------------------------
    def validate(
        self,
        frames: dict[str, pd.DataFrame],
        snapshot: Path,
        labels: list[str],
        cfg: ValidateConfig,
        docs_dir: Path | None = None,
        reference: pd.DataFrame | None = None,
    ) -> ValidationReport:
        """Run the task's expectations (plus the generic label and class-count ones) on the splits."""
        ...

    # -- train: model, inputs, the parts the strategies act on --------------------------------------------
    def build_model(self, base: Path, labels: list[str], pretrained: bool = True) -> PreTrainedModel:
        """The pretrained model of `base` with a fresh head for `labels`; False: random initialisation."""
        ...

    def load_model(self, model_dir: Path) -> PreTrainedModel:
        """A saved fine-tuned model for inference (safetensors only)."""
        ...

    def processor(self, model_dir: Path, max_length: int, training: bool = False) -> Any:
        """What turns inputs into tensors for the model of `model_dir` (text: its tokenizer cutting at
        `max_length`; images: its resize/normalise, at ``image.size`` when `training`)."""
        ...

    def save_processor(self, processor: Any, out_dir: Path) -> None:
        """Save the processor beside the fine-tuned weights, so serving reads the inputs as training did."""
        ...

    def augmentation(self, seed: int) -> Any:
        """Training-only augmentation (None: none)."""
        ...

    def items(self, frame: pd.DataFrame, snapshot: Path) -> list[Any]:
        """The inputs of a prepared split's rows (texts; image files inside the snapshot)."""
        ...

    def encode_items(self, items: list[Any], processor: Any) -> Any:
        """Unlabelled inputs (texts; image paths or decoded images) as model-ready examples."""
        ...

    def encode(self, frame: pd.DataFrame, snapshot: Path, labels: list[str], processor: Any = None) -> Any:
        """A split as model-ready examples and class ids (``.labels``); ``.sizes`` orders batches."""
        ...

    def batches(self, inputs: Any, batch_size: int, rng: random.Random) -> list[list[int]]:
        """One epoch's training batches (text groups similar lengths; images shuffle)."""
        ...

    def collate(
        self, inputs: Any, indices: list[int], processor: Any, augmentation: Any = None, epoch: int = 0
    ) -> dict[str, torch.Tensor]:
        """The forward-pass keyword arguments of examples `indices` (augmented only when given)."""
        ...

    def example_key(self, inputs: Any, index: int) -> Any:
        """What makes two examples' fixed-layer outputs equal (text: token ids; images: the file)."""
        ...

    def blocks(self, model: PreTrainedModel) -> Any:
        """The stem, the layers (early -> late); the head is every other parameter."""
        ...

    def cacheable(self, model: PreTrainedModel) -> bool:
        """Whether ``bottom``/``top`` reproduce this architecture's forward pass (activation cache)."""
        ...

    def bottom(self, model: PreTrainedModel, inputs: dict[str, torch.Tensor], depth: int) -> Any:
        """The output of the stem and the lowest `depth` layers."""
        ...

    def top(self, model: PreTrainedModel, hidden: Any, depth: int) -> torch.Tensor:
        """Logits (B, C) or (B, T, C) from the output of layer `depth`: ``top(bottom(x, d), d)`` is the
        forward pass."""
        ...

    def split_hidden(self, hidden: Any) -> list[torch.Tensor]:
        """A batch of ``bottom``'s output as one CPU tensor per example (what the activation cache keeps)."""
        ...

    def stack_hidden(self, rows: list[torch.Tensor]) -> Any:
        """Cached rows back into the batch ``top`` takes."""
        ...

    def hidden_to(self, hidden: Any, device: Any) -> Any:
        """A batch of ``stack_hidden`` moved to `device`."""
        ...

    def logits(self, model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The one forward pass of training, evaluation and serving: logits (B, C), or (B, T, C)."""
        ...

    def validation_score(self, logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> float:
        """The validation split's score that training keeps the best epoch by (classification: accuracy;
        entities: micro entity F1 of each word's first sub-token); `classes`: the model's, in id order."""
        ...

    def apply_lora(self, model: PreTrainedModel, cfg: TrainConfig) -> Any:
        """`model` wrapped with LoRA adapters on the task's projections; the head trained in full."""
        ...

    # -- evaluate ------------------------------------------------------------------------------------------
    def score(
        self,
        predictor: Any,
        frame: pd.DataFrame,
        snapshot: Path,
        labels: list[str],
        name: str,
        batch_size: int,
    ) -> EvalResult:
        """A tasks.inference.Predictor on a prepared split's rows: the EvalResult the gate decides on, with
        its headline metric (classification: accuracy; entities: micro F1, per-sentence counts)."""
        ...

    # -- predictions, serving, scoring ----------------------------------------------------------------------
    def predict(self, predictor: Any, items: list[Any], batch_size: int) -> list[dict[str, Any]]:
        """What a prediction is, per input, as a JSON-ready object: what /predict answers and the
        MLflow model returns (classification: label, score, probabilities; entities: their spans)."""
        ...

    def prediction_columns(self, predictions: list[dict[str, Any]], labels: list[str]) -> dict[str, list]:
        """``predict``'s answers as the columns batch-predict adds to a table (classification: prediction,
        score, prob_<label>; entities: one column of JSON)."""
        ...

    def parse_request(self, body: bytes, content_type: str, limits: Any) -> list[Any]:
        """The inputs of a POST /predict body within the limits; a 4xx error that says what to fix."""
        ...

    def scoring_items(self, path: Path) -> list[Any]:
        """What ``batch-predict`` scores in `path` (text: a table's rows; images: a folder or a list)."""
        ...

    def scoring_input(self, path: Path, column: str) -> Any:
        """``batch-predict``'s input as a tasks.scoring.ScoringInput: the rows, the column holding each
        row's input, the sha256 of what was read; ScoringInputError when unusable."""
        ...

    def warmup_input(self) -> Any:
        """One input that exercises the model (serving warms the kernels up before the first request)."""
        ...

    # -- drift ---------------------------------------------------------------------------------------------
    def drift_checks(
        self,
        reference: pd.DataFrame,
        current: pd.DataFrame,
        snapshots: tuple[Path, Path],
        cfg: DriftConfig,
        encoder_dir: Path | None,
    ) -> list[DriftCheck]:
        """The task's drift checks besides the label shares (text: length, vocabulary, embeddings)."""
        ...

    def embed(self, items: list[Any], model_dir: Path) -> np.ndarray:
        """(N, D) L2-normalised pooled features of the pretrained model: the embedding-drift sample."""
        ...

    def drift_panel(self, axes: Any, reference: pd.DataFrame, current: pd.DataFrame) -> bool:
        """Draw the task's own panel of the drift plot beside the label shares, reference vs current (text:
        text lengths); False when it has none."""
        ...
