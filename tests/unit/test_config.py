"""params.yaml -> Config: every bad value is refused before any work, naming the key."""

from pathlib import Path

import pytest
import yaml

from tasks.config import ConfigError, config_from_dict, describe_params, load_config, parse_overrides

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(PARAMS.read_text())


def test_shipped_params_are_valid_and_complete():
    cfg = load_config(PARAMS)
    assert cfg.data.labels == ["rotten", "fresh"]
    assert cfg.train.learning_rate > 0
    # every setting has a one-line comment (the `transferline params` listing)
    rows = describe_params(PARAMS)
    assert len(rows) == sum(len(section) for section in yaml.safe_load(PARAMS.read_text()).values())
    assert all(comment for _, _, comment in rows), [k for k, _, c in rows if not c]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"train.learning_rate": -0.001}, "train.learning_rate: Input should be greater than 0"),
        ({"data.test_size": 1.0}, "data.test_size: Input should be less than 1"),
        ({"data.test_size": 0.5, "data.val_size": 0.45}, "leaves too little to train on"),
        ({"train.epochs": "three"}, "train.epochs"),
        ({"train.batch_size": 0}, "train.batch_size"),
        ({"train.precision": "fp8"}, "train.precision"),
        ({"data.labels": ["a", "a"]}, "labels must be unique"),
        ({"data.labels": ["only"]}, "data.labels"),
        ({"gate.min_accuracy": 1.5}, "gate.min_accuracy"),
        ({"validate.max_text_chars": 0}, "validate.max_text_chars"),
    ],
)
def test_invalid_values_name_the_key(raw, override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(raw, override)


def test_unknown_keys_are_refused_with_a_suggestion(raw):
    with pytest.raises(ConfigError, match=r"train.epoch: unknown key \(did you mean 'epochs'\?\)"):
        config_from_dict(raw, {"train.epoch": 3})
    with pytest.raises(ConfigError, match=r"trian: unknown key \(did you mean 'train'\?\)"):
        config_from_dict(raw, {"trian.epochs": 3})
    bad = {**raw, "train": {**raw["train"], "lr": 0.1}}
    with pytest.raises(ConfigError, match=r"train.lr: unknown key"):
        config_from_dict(bad)


def test_missing_key_is_named(raw):
    bad = {**raw, "gate": {"min_accuracy": 0.8}}
    with pytest.raises(ConfigError, match=r"gate.min_improvement: missing"):
        config_from_dict(bad)


def test_overrides_parse_types():
    assert parse_overrides(["train.epochs=1", "train.learning_rate=1e-4", "data.max_rows=null"]) == {
        "train.epochs": 1,
        "train.learning_rate": 1e-4,
        "data.max_rows": None,
    }
    assert parse_overrides(["data.labels=[neg, pos]", "data.source=file:///x.csv"]) == {
        "data.labels": ["neg", "pos"],
        "data.source": "file:///x.csv",
    }
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["train.epochs"])


def test_numeric_labels_become_strings(raw):
    cfg = config_from_dict(raw, {"data.labels": [0, 1], "data.label_map": {0: "neg", "pos": 1}})
    assert cfg.data.labels == ["0", "1"]
    assert cfg.data.label_map == {"0": "neg", "pos": "1"}


def test_digest_is_stable_and_section_scoped(raw):
    a, b = config_from_dict(raw), config_from_dict(raw, {"gate.min_accuracy": 0.5})
    assert a.digest() == config_from_dict(raw).digest()
    assert a.digest() != b.digest()
    assert a.digest("train") == b.digest("train")


def test_bad_yaml_and_missing_file(tmp_path):
    (tmp_path / "p.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match="no such params file"):
        load_config(tmp_path / "missing.yaml")
