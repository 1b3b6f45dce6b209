"""Row 22: bad inputs of the image and token-classification tasks, in their data and in their requests.

Bad data runs the real retraining flow (Prefect, DVC, GX; no mocks), which must stop at validation naming
every bad file or sentence, and train and register nothing. Bad request bodies go through the parser
`transferline serve` calls for the served model's task (`TaskKind.parse_request`), which must answer the
4xx that says what to fix (tests/pipeline/test_token_pipeline.py sends one to a real server).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.kinds.base import RequestError
from tasks.kinds.image_requests import ImageLimits
from tasks.kinds.image_requests import parse_request as parse_images
from tasks.kinds.token_requests import parse_request as parse_texts
from tasks.validate import DataValidationError
from tests.conftest import make_project
from tests.data.images import bomb_png, lfw_folder, noise, png_bytes, truncated
from tests.data.sentences import corpus, line_span, write_conll
from tests.pipeline.test_image_pipeline import IMAGE_PARAMS
from tests.pipeline.test_retrain_flow import model_name, registry
from tests.pipeline.test_token_pipeline import NER_PARAMS
from tests.reliability.ledger import Ledger

IMAGE_LIMITS = ImageLimits(max_batch=4, max_image_bytes=200_000, max_pixels=1_000_000)


def refused_without_training(project: Path) -> str:
    """Run the flow; it must stop at validation, train nothing and register nothing: its message."""
    from flows.retrain import retrain

    with pytest.raises(DataValidationError) as refused:
        retrain(project_dir=str(project))
    assert not (project / "models" / "challenger").exists(), "the refused run trained a model"
    assert registry(project).list_versions(model_name(project)) == []
    return str(refused.value)


@pytest.mark.pipeline
def test_bad_image_files_stop_the_run_before_training_and_are_listed_with_what_to_do(
    tmp_path: Path, prefect_server, ledger: Ledger
):
    """A truncated PNG, a zero-byte file and a text file renamed .png in a class folder: validation refuses
    the data, names all three in bad_images.csv beside the report, and nothing is trained or registered."""
    project = make_project(tmp_path, {**IMAGE_PARAMS, "registry.model_name": "faces-refused"})
    source = lfw_folder(project / "data" / "raw" / "lfw", per_class=12)
    broken = {
        "face/cut.png": ("truncated", truncated(png_bytes(noise(1, (64, 64)))), "copy it again"),
        "face/empty.png": ("zero-bytes", b"", "copy it again"),
        "other/notes.png": ("not-an-image", b"label,file\nface,001.png\n", "remove it from the source"),
    }
    for name, (_, content, _) in broken.items():
        (source / name).write_bytes(content)
    message = refused_without_training(project)
    assert "reports/validation/bad_images.csv" in message
    report = project / "reports" / "validation"
    listed = pd.read_csv(report / "bad_images.csv").set_index("path")
    assert list(listed.columns) == ["split", "problem", "what_to_do"]
    assert sorted(listed.index) == sorted(broken)
    assert set(listed["split"]) <= {"train", "validation", "test"}
    for name, (problem, _, todo) in broken.items():
        with ledger.bad_input(22, f"image folder: a {problem} file -> listed with what to do, not trained"):
            assert listed.loc[name, "problem"].startswith(problem) and todo in listed.loc[name, "what_to_do"]
    assert "[bad_images.csv](bad_images.csv)" in (report / "summary.md").read_text()


@pytest.mark.pipeline
def test_bad_sentences_stop_the_run_at_validation_each_named(tmp_path: Path, prefect_server, ledger: Ledger):
    """A sentence with more tags than tokens, an I- tag after O and a tag of an undeclared type: the flow
    stops at validation naming each sentence by its lines, and trains and registers nothing."""
    project = make_project(tmp_path, NER_PARAMS)
    rows = corpus(60)
    rows[7] = (["Ada", "Lovelace", "wrote"], ["B-person", "I-person", "O", "O"])  # more tags than tokens
    rows[11] = (["we", "met", "Alan", "Turing"], ["O", "O", "O", "I-person"])  # I- after O
    rows[13] = (["Acme", "hired", "Linus"], ["B-company", "O", "B-person"])  # company is not declared
    write_conll(project / "data" / "raw" / "ner.txt", rows)
    message = refused_without_training(project)
    with ledger.bad_input(22, "tagged file: more tags than tokens -> refused, sentence named"):
        assert f"data/raw/ner.txt:{line_span(rows, 7)} (3 tokens, 4 tags)" in message
    with ledger.bad_input(22, "tagged file: an I- tag after O -> refused, sentence named"):
        assert f"data/raw/ner.txt:{line_span(rows, 11)} (token 4 'Turing': I-person after O)" in message
    with ledger.bad_input(22, "tagged file: a tag of an undeclared entity type -> refused, tag named"):
        assert "B-company" in message


@pytest.mark.bad_input(22)
@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"texts": ["a"]}).encode(), 422, '"images"'),
        (json.dumps({"images": ["***"]}).encode(), 422, "not valid base64"),
        (json.dumps({"images": [base64.b64encode(b"hello").decode()]}).encode(), 422, "image 0 not an image"),
        (json.dumps({"images": [base64.b64encode(bomb_png()).decode()]}).encode(), 413, "pixels"),
        (
            json.dumps({"images": [base64.b64encode(png_bytes(noise(0)[:9, :9])).decode()] * 5}).encode(),
            413,
            "5",
        ),
    ],
    ids=["not-json", "wrong-shape", "bad-base64", "not-an-image", "decompression-bomb", "too-many"],
)
def test_image_request_gets_a_4xx_that_says_why(body: bytes, status: int, says: str):
    with pytest.raises(RequestError) as caught:
        parse_images(body, "application/json", IMAGE_LIMITS)
    assert caught.value.status == status and says in caught.value.detail


@pytest.mark.bad_input(22)
@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json at all", 400),
        (b'{"text": 3}', 422),
        (json.dumps({"text": "a"}).encode() + b'\n{"words": ["a"]}\n', 422),
        (b"\n".join(json.dumps({"text": f"t{i}"}).encode() for i in range(5)), 413),
        (json.dumps({"texts": ["a"] * 5}).encode(), 413),
        (b'{"text": "\\ud800"}', 422),
    ],
    ids=["not json", "not a string", "a line without text", "too many lines", "too many texts", "surrogate"],
)
def test_entity_request_gets_a_4xx_that_says_why(body: bytes, status: int):
    with pytest.raises(RequestError) as refused:
        parse_texts(body, "application/x-ndjson", max_batch=4)
    assert refused.value.status == status
