"""The shared deduplicate / subsample / split rules: with the normalised text as key they reproduce the text
task's prepare exactly, and with a content hash they never put one file in two splits."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks import prepare
from tasks.kinds import splitting


def reviews(n: int = 300) -> pd.DataFrame:
    words = ["good", "bad", "slow", "fun", "long", "dull", "bright", "odd"]
    rows = [
        (f"{words[i % 8]} film {i % 20}  {'GREAT' if i % 5 else 'great'}", "pos" if i % 3 else "neg")
        for i in range(n)
    ]
    rows += [(None, "pos"), ("orphan", None)]
    return pd.DataFrame(rows, columns=[prepare.TEXT, prepare.LABEL]).astype("string")


def keyed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(key=prepare._dedupe_key(frame[prepare.TEXT]))


@pytest.mark.parametrize("seed", [0, 13])
def test_text_splits_are_unchanged_on_the_shared_rules(seed):
    frame = reviews()
    ours, dropped = splitting.drop_duplicates(keyed(frame), "key")
    theirs, their_dropped = prepare.drop_duplicate_texts(frame)
    assert dropped == their_dropped > 0
    pd.testing.assert_frame_equal(ours.drop(columns="key"), theirs)
    ours = splitting.subsample(ours, "key", 150, seed)
    theirs = prepare.subsample(theirs, 150, seed)
    pd.testing.assert_frame_equal(ours.drop(columns="key"), theirs)
    mine = splitting.split(ours, "key", 0.2, 0.2, seed)
    text = prepare.split(theirs, 0.2, 0.2, seed)
    for name in text:
        pd.testing.assert_frame_equal(mine[name].drop(columns="key"), text[name])


def test_no_key_in_two_splits_once_duplicates_are_dropped():
    frame = pd.DataFrame({"sha256": [f"{i % 40:064x}" for i in range(120)], "label": ["a", "b", "c"] * 40})
    unique, dropped = splitting.drop_duplicates(frame, "sha256")
    assert dropped == 80
    parts = splitting.split(unique, "sha256", 0.25, 0.25, seed=3)
    seen = [set(part["sha256"]) for part in parts.values()]
    assert sum(map(len, seen)) == 40 and len(set.union(*seen)) == 40
    assert list(parts["train"].columns) == ["sha256", "label"]  # every column kept
