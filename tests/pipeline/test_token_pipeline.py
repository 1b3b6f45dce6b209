"""Token classification through the real retraining flow (Prefect, DVC, GX, MLflow; no mocks): a tagged
file with a misaligned sentence and an I- tag after O is refused at validation, both sentences named, and
nothing is trained or registered."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.validate import DataValidationError
from tests.conftest import make_project
from tests.data.sentences import TYPES, corpus, line_span, write_conll
from tests.pipeline.test_retrain_flow import model_name, registry

pytestmark = pytest.mark.pipeline

NER_PARAMS = {
    "task.type": "token-classification",
    "data.source": "data/raw/ner.txt",
    "data.labels": TYPES,
    "data.max_rows": None,
    "ner.min_entities_per_type": 5,
    "validate.data_docs": False,
    "train.epochs": 1,
    "train.max_length": 32,
}


def test_a_misaligned_sentence_and_an_opening_inside_tag_stop_the_flow_at_validation(
    tmp_path: Path, prefect_server
):
    from flows.retrain import retrain

    project = make_project(tmp_path, NER_PARAMS)
    rows = corpus(60)
    rows[7] = (["Ada", "Lovelace", "wrote"], ["B-person", "I-person", "O", "O"])  # more tags than tokens
    rows[11] = (["we", "met", "Alan", "Turing"], ["O", "O", "O", "I-person"])  # I- after O
    write_conll(project / "data" / "raw" / "ner.txt", rows)
    with pytest.raises(DataValidationError) as refused:
        retrain(project_dir=str(project))
    message = str(refused.value)
    assert f"data/raw/ner.txt:{line_span(rows, 7)} (3 tokens, 4 tags)" in message
    assert f"data/raw/ner.txt:{line_span(rows, 11)} (token 4 'Turing': I-person after O)" in message
    assert not (project / "models" / "challenger").exists(), "the refused run trained a model"
    assert registry(project).list_versions(model_name(project)) == []
