"""The serving core's pure parts: weight verification and request parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.kinds.text_requests import parse_predict_body
from tasks.promote import model_files_sha256
from tasks.serve import RequestError, VerificationError, verify_model_dir


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.safetensors").write_bytes(b"weights" * 100)
    (tmp_path / "config.json").write_text('{"id2label": {"0": "neg", "1": "pos"}}')
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "transferline.json").write_text("{}")  # logged with the run, not part of the model
    return tmp_path


def tags_for(model_dir: Path) -> dict[str, str]:
    files = model_files_sha256(model_dir)
    return {"weights_sha256": files["model.safetensors"], "model_files_sha256": json.dumps(files)}


def test_recorded_files_cover_the_model_but_not_the_run_metadata(model_dir: Path):
    assert set(model_files_sha256(model_dir)) == {"model.safetensors", "config.json", "tokenizer.json"}


def test_matching_files_verify(model_dir: Path):
    tags = tags_for(model_dir)
    assert verify_model_dir(model_dir, tags) == tags["weights_sha256"]
    # a version registered before the file manifest existed is checked on its weights alone
    assert verify_model_dir(model_dir, {"weights_sha256": tags["weights_sha256"]}) == tags["weights_sha256"]


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            lambda d: (d / "model.safetensors").write_bytes(b"weights" * 99 + b"WEIGHTS"),
            "model.safetensors has",
        ),
        (
            lambda d: (d / "config.json").write_text('{"id2label": {"0": "pos", "1": "neg"}}'),
            "config.json has",
        ),
        (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    ],
)
def test_any_changed_or_missing_file_is_refused(model_dir: Path, tamper, message: str):
    tags = tags_for(model_dir)
    tamper(model_dir)
    with pytest.raises(VerificationError, match=message):
        verify_model_dir(model_dir, tags)


def test_a_version_without_recorded_hashes_is_refused(model_dir: Path):
    with pytest.raises(VerificationError, match="no weights_sha256 tag"):
        verify_model_dir(model_dir, {"data_hash": "abc"})
    tags = tags_for(model_dir) | {"model_files_sha256": "{not json"}
    with pytest.raises(VerificationError, match="unreadable"):
        verify_model_dir(model_dir, tags)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"{", 400),
        (b"\xff", 400),
        (b"null", 422),
        (b'{"texts": null}', 422),
        (b'{"texts": [null]}', 422),
        (b'{"texts": [["nested"]]}', 422),
        (b'{"texts": ["a"], "extra": 1}', 422),
        (b'{"texts": ["a", "b", "c", "d"]}', 413),
    ],
)
def test_bad_bodies_are_client_errors(body: bytes, status: int):
    with pytest.raises(RequestError) as err:
        parse_predict_body(body, max_batch=3)
    assert err.value.status == status


def test_a_good_body_gives_its_texts():
    assert parse_predict_body(b'{"texts": ["a", "", "c"]}', max_batch=3) == ["a", "", "c"]
