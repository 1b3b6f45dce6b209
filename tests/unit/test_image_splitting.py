"""The shared deduplicate / subsample / split rules: text splits stay byte for byte what they were before
text moved onto them (digests recorded from the stage's earlier code), and with a content hash they never
put one file in two splits."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from tasks.config import load_config
from tasks.kinds import splitting
from tasks.kinds.text_sources import (
    LABEL,
    TEXT,
    drop_duplicate_texts,
    prepare_splits,
    read_text_source,
    split_texts,
    subsample_texts,
)

ROOT = Path(__file__).resolve().parents[2]
# sha256 (first 16 hex digits) of each split's CSV, as tasks/prepare.py's own split code wrote them.
BEFORE = {
    0: {"train": "b3357cd9deb126d6", "validation": "02f829a76c57844e", "test": "f5125f1f4b96fa8e"},
    13: {"train": "0843557b3aa4a6ea", "validation": "a7f594e515150570", "test": "e547a070cdffeceb"},
}
SAMPLE_BEFORE = {  # the packaged sample with params.yaml's data settings: 57 duplicates dropped
    None: {"train": "c911ddf5ff354941", "validation": "1138e382a1f1a6fe", "test": "a39b74d334f22d6d"},
    3000: {"train": "91526ab770143c03", "validation": "65a522c5f179037b", "test": "150b3753c2b576e0"},
}


def reviews(n: int = 300) -> pd.DataFrame:
    words = ["good", "bad", "slow", "fun", "long", "dull", "bright", "odd"]
    rows = [
        (f"{words[i % 8]} film {i % 20}  {'GREAT' if i % 5 else 'great'}", "pos" if i % 3 else "neg")
        for i in range(n)
    ]
    rows += [(None, "pos"), ("orphan", None)]
    return pd.DataFrame(rows, columns=[TEXT, LABEL]).astype("string")


def digests(splits: dict[str, pd.DataFrame]) -> dict[str, str]:
    return {k: hashlib.sha256(p.to_csv(index=False).encode()).hexdigest()[:16] for k, p in splits.items()}


@pytest.mark.parametrize("seed", [0, 13])
def test_text_splits_are_unchanged_on_the_shared_rules(seed):
    unique, dropped = drop_duplicate_texts(reviews())
    assert dropped == 260 and len(unique) == 42  # 40 texts once case is folded, and the two odd rows
    assert digests(split_texts(subsample_texts(unique, 150, seed), 0.2, 0.2, seed)) == BEFORE[seed]


@pytest.mark.parametrize("max_rows", [None, 3000])
def test_the_sample_splits_are_unchanged(max_rows):
    data = load_config(ROOT / "params.yaml").data.model_copy(update={"max_rows": max_rows})
    source = read_text_source(data, ROOT)
    splits, dropped = prepare_splits(source.frame, data, source.keep_labels)
    assert dropped == 57 and digests(splits) == SAMPLE_BEFORE[max_rows]


def test_no_key_in_two_splits_once_duplicates_are_dropped():
    frame = pd.DataFrame({"sha256": [f"{i % 40:064x}" for i in range(120)], "label": ["a", "b", "c"] * 40})
    unique, dropped = splitting.drop_duplicates(frame, "sha256")
    assert dropped == 80
    parts = splitting.split(unique, "sha256", 0.25, 0.25, seed=3)
    seen = [set(part["sha256"]) for part in parts.values()]
    assert sum(map(len, seen)) == 40 and len(set.union(*seen)) == 40
    assert list(parts["train"].columns) == ["sha256", "label"]  # every column kept
