"""Token classification, up to the prepared snapshot: the tag scheme, the four sources, prepare's splits."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.config import ConfigError
from tasks.kinds import load_recorded, task_of
from tasks.kinds.token_config import NerConfig
from tasks.kinds.token_sources import (
    LABEL,
    REPAIRED,
    TAGS,
    TEXT,
    TokenSourceError,
    as_lists,
    read_token_source,
)
from tasks.kinds.token_tags import entities, opening_inside, tag_names, to_iob2
from tests.data.sentences import TYPES, corpus, ner_config, write_conll, write_jsonl


def test_the_tag_set_and_the_iob_rules():
    assert tag_names(TYPES) == ["O", "B-person", "I-person", "B-geo-loc", "I-geo-loc"]
    tags = ["I-person", "I-person", "O", "I-geo-loc", "B-geo-loc", "I-person"]
    assert opening_inside(tags) == [0, 3, 5]  # first, after O, after another type
    converted, count = to_iob2(tags)
    assert converted == ["B-person", "I-person", "O", "B-geo-loc", "B-geo-loc", "B-person"] and count == 3
    assert entities(converted) == [("person", 0, 2), ("geo-loc", 3, 4), ("geo-loc", 4, 5), ("person", 5, 6)]


@pytest.mark.parametrize("separator", ["\t", ""])
def test_conll_sentences_end_at_a_blank_or_tab_only_line_and_are_named_by_their_lines(tmp_path, separator):
    sentences = corpus(5)
    path = write_conll(tmp_path / "ner.txt", sentences, separator)
    source = read_token_source("ner.txt", tmp_path, ner_config().ner)
    assert len(source.frame) == 5
    assert as_lists(source.frame, "tokens") == [t for t, _ in sentences]
    assert as_lists(source.frame, TAGS) == [g for _, g in sentences]
    first = len(sentences[0][0])
    assert source.frame["sentence"][0] == f"ner.txt:1-{first}"
    assert source.frame["sentence"][1].startswith(f"ner.txt:{first + 2}-")
    assert (
        len(source.identity) == 64
        and source.identity == read_token_source(str(path), tmp_path, ner_config().ner).identity
    )


def test_a_conll_line_without_a_tag_keeps_its_sentence_misaligned_for_validation(tmp_path):
    (tmp_path / "bad.conll").write_text("-DOCSTART-\tO\n\nAda\tB-person\nwrote\nit\tO\n\nOslo\tB-geo-loc\n")
    frame = read_token_source("bad.conll", tmp_path, ner_config().ner).frame
    assert as_lists(frame, "tokens") == [["Ada", "wrote", "it"], ["Oslo"]]
    assert as_lists(frame, TAGS) == [["B-person", "O"], ["B-geo-loc"]]
    assert list(frame["sentence"]) == ["bad.conll:3-5", "bad.conll:7"]


def test_jsonl_sentences_and_a_line_that_is_not_one(tmp_path):
    write_jsonl(tmp_path / "s.jsonl", corpus(4))
    frame = read_token_source("s.jsonl", tmp_path, ner_config().ner).frame
    assert len(frame) == 4 and frame["sentence"][2] == "s.jsonl:3"
    (tmp_path / "s.jsonl").write_text('{"tokens": ["a"], "tags": ["O"]}\n{"tokens": "a b", "tags": []}\n')
    with pytest.raises(TokenSourceError, match=r"s.jsonl, line 2: .*ner.tokens_column"):
        read_token_source("s.jsonl", tmp_path, ner_config().ner)
    with pytest.raises(TokenSourceError, match="does not exist"):
        read_token_source("absent.txt", tmp_path, ner_config().ner)


def test_a_saved_hub_dataset_with_class_label_tags_reads_tag_names(tmp_path):
    import datasets

    names = tag_names(TYPES)
    features = datasets.Features(
        {
            "words": datasets.Sequence(datasets.Value("string")),
            "ner": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    rows = corpus(3)
    data = {"words": [t for t, _ in rows], "ner": [[names.index(g) for g in tags] for _, tags in rows]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(data, features=features)}).save_to_disk(
        tmp_path / "hub"
    )
    ner = ner_config({"ner.tokens_column": "words", "ner.tags_column": "ner"}).ner
    source = read_token_source(f"hf-dataset://{tmp_path / 'hub'}#train", tmp_path, ner)
    assert as_lists(source.frame, TAGS) == [g for _, g in rows]
    with pytest.raises(TokenSourceError, match=r"ner\.tokens_column"):
        read_token_source(f"hf-dataset://{tmp_path / 'hub'}#train", tmp_path, ner_config().ner)


def test_the_wnut16_sample_comes_from_the_installed_package():
    source = read_token_source("sample://wnut16", None, ner_config().ner)
    tags = [t for tags in as_lists(source.frame, TAGS) for t in tags]
    assert len(source.frame) == 2394 and len(tags) == 46469
    types = {t.split("-", 1)[1] for t in tags if t != "O"}
    assert types == {"person", "geo-loc", "other", "company", "facility", "product", "musicartist",
                     "sportsteam", "movie", "tvshow"}  # fmt: skip


def test_prepare_splits_by_sentence_stratified_by_the_rarest_type(tmp_path):
    rows = corpus(60)
    rows += [(["Kyoto", "rocks", f"!{i}"], ["B-geo-loc", "O", "O"]) for i in range(10)]  # geo-loc only
    rows.append(rows[0])  # a repeated sentence is dropped
    write_conll(tmp_path / "ner.txt", rows)
    cfg = ner_config({"data.source": "ner.txt"})
    kind = task_of(cfg)
    splits, dropped = kind.prepare(kind.read_source(cfg.data, tmp_path), cfg.data)
    assert dropped == 1 and sum(len(s) for s in splits.values()) == 70
    keys = [set(s[TEXT]) for s in splits.values()]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    # person is rarer than geo-loc (60 vs 70 entities): sentences with both are stratified as person
    assert set(splits["test"][LABEL]) == {"person", "geo-loc"}
    assert kind.key(splits["train"]).equals(splits["train"][TEXT])


def test_iob1_is_converted_and_an_iob2_repair_is_counted(tmp_path):
    rows = [(["Ada", "Lovelace", "and", "Oslo"], ["I-person", "I-person", "O", "I-geo-loc"])]
    frame = pd.DataFrame({"sentence": ["s:1"], "tokens": [rows[0][0]], TAGS: [rows[0][1]]})
    from tasks.kinds.token_sources import normalise

    want = ["B-person", "I-person", "O", "B-geo-loc"]
    iob1 = normalise(frame, ner_config().data, ner_config({"ner.scheme": "IOB1"}).ner)
    assert iob1[TAGS][0] == want and iob1[REPAIRED][0] == 0
    repaired = normalise(frame, ner_config().data, ner_config({"ner.repair_iob": True}).ner)
    assert repaired[TAGS][0] == want and repaired[REPAIRED][0] == 2
    kept = normalise(frame, ner_config({"data.label_map": {"geo-loc": "place"}}).data, ner_config().ner)
    assert kept[TAGS][0] == ["I-person", "I-person", "O", "I-place"] and kept[REPAIRED][0] == 0


def test_the_ner_section_is_typed_and_recorded_with_a_saved_model():
    with pytest.raises(ConfigError, match=r"max_tokens must be >= min_tokens"):
        ner_config({"ner.max_tokens": 3, "ner.min_tokens": 5})
    with pytest.raises(ConfigError, match=r"ner.scheme"):
        ner_config({"ner.scheme": "BILOU"})
    cfg = ner_config()
    kind = load_recorded({"type": "token-classification", "options": cfg.ner.model_dump(mode="json")})
    assert isinstance(kind.options, NerConfig) and kind.options == cfg.ner
    assert kind.name == "token-classification"
