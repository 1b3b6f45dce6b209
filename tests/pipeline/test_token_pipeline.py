"""Token classification through the real retraining flow (Prefect, DVC, GX, MLflow; no mocks): a tagged
file with a misaligned sentence and an I- tag after O is refused at validation, both sentences named, and
nothing is trained or registered; a clean file is promoted, and its champion answers entity spans to a
plain MLflow client, to `transferline serve` on loopback and to `transferline batch-predict`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_project
from tests.data.sentences import TYPES, corpus, write_conll
from tests.pipeline.test_retrain_flow import registry

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


# A tiny real run: synthetic sentences (one person and one place each), every layer adapting for a few
# small batches, the entity-F1 floor at 0 (what is promoted is the first model; the test reads what it says).
PROMOTED_PARAMS = {
    **NER_PARAMS,
    "train.epochs": 3,
    "train.batch_size": 8,
    "train.learning_rate": 1.0e-3,
    "gate.min_accuracy": 0.0,
    "registry.model_name": "entities",
}


def test_a_tagged_file_is_promoted_and_its_champion_answers_spans(tmp_path: Path, prefect_server, capsys):
    import json
    import os

    import mlflow

    from flows.retrain import retrain
    from tasks.kinds.token_requests import parse_request
    from tests.conftest import cli

    project = make_project(tmp_path, PROMOTED_PARAMS)
    write_conll(project / "data" / "raw" / "ner.txt", corpus(100))
    summary = retrain(project_dir=str(project))
    assert summary.promoted and summary.version == "1", summary.report
    metrics = json.loads((project / "reports" / "evaluation" / "metrics.json").read_text())
    assert metrics["metric"] == "f1" and set(metrics["per_class"]) == set(TYPES)
    gate = json.loads((project / "reports" / "gate.json").read_text())
    assert gate["metric"] == "f1" and gate["challenger_accuracy"] == pytest.approx(metrics["f1"])
    # the run summary and the model card lead with the entity F1 by name, not the word accuracy
    assert f"| test entity F1 | {metrics['f1']:.4f} |" in summary.report
    assert "| word accuracy |" in summary.report
    card = registry(project).client().get_model_version("entities", "1").description
    assert f"Entity F1 {metrics['f1']:.4f} (micro, exact span and type)" in card
    assert "Task: named-entity recognition" in card and "| entity type |" in card

    capsys.readouterr()
    assert cli("status", "--json", "--project", str(project)) == 0
    champion = json.loads(capsys.readouterr().out)["champion"]
    assert champion["version"] == "1"
    assert champion["metrics"]["test_f1"] == pytest.approx(metrics["f1"])
    assert metrics["f1"] > 0.5, "the synthetic entities are easy: a trained model finds most of them"

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    try:
        model = mlflow.pyfunc.load_model("models:/entities@champion")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    text = "Grace Hopper  visited Kyoto, yesterday #7"
    (spans,) = model.predict([text])
    assert spans, "no entity found in a sentence like the training ones"
    for span in spans:
        assert set(span) == {"type", "text", "start", "end", "score"}
        assert text[span["start"] : span["end"]] == span["text"] and span["type"] in TYPES
        assert 0.0 < span["score"] <= 1.0
    assert "Kyoto" in [s["text"] for s in spans if s["type"] == "geo-loc"]  # the comma left out

    lines = b"\n".join(json.dumps({"text": t}).encode() for t in (text, "   ", "Linus left Oslo again #3"))
    texts = parse_request(lines, "application/x-ndjson", max_batch=8)
    answered = model.predict(texts)
    where = [[(s["type"], s["start"], s["end"]) for s in found] for found in answered]
    assert (
        len(where) == 3 and where[0] == [(s["type"], s["start"], s["end"]) for s in spans] and where[1] == []
    )
    served_and_scored_spans_match(project, texts, answered, tmp_path)


def same_spans(got: list[list[dict]], expected: list[list[dict]]) -> bool:
    """The same entities at the same offsets, their scores equal to float noise (another batch)."""
    where = [[(s["type"], s["start"], s["end"], s["text"]) for s in spans] for spans in got]
    assert where == [[(s["type"], s["start"], s["end"], s["text"]) for s in spans] for spans in expected]
    scores = [s["score"] for spans in got for s in spans]
    return scores == pytest.approx([s["score"] for spans in expected for s in spans], abs=1e-4)


def served_and_scored_spans_match(project: Path, texts: list[str], expected: list[list[dict]], tmp: Path):
    """`transferline serve` and `transferline batch-predict` answer the MLflow model's spans."""
    import json

    import pandas as pd

    from tests.conftest import cli
    from tests.serving.test_serve import Client, serving

    with serving(project, tmp / "serve.log") as server:
        client = Client(server["port"])
        status, body = client.predict(texts)
        assert status == 200 and body["version"] == "1", body
        assert same_spans([p["entities"] for p in body["predictions"]], expected)
        status, body = client.call("POST", "/predict", b'{"texts": [7]}')
        assert status == 422 and "string" in json.dumps(body["detail"]), body  # says what to fix
    # a table of texts (batch-predict refuses blank ones, so the blank request line is left out)
    kept = [i for i, text in enumerate(texts) if text.strip()]
    source, output = tmp / "tweets.jsonl", tmp / "tweets.predictions.jsonl"
    pd.DataFrame({"text": [texts[i] for i in kept]}).to_json(source, orient="records", lines=True)
    assert cli("batch-predict", str(source), "--project", str(project), "--output", str(output)) == 0
    scored = pd.read_json(output, lines=True, dtype=False)
    assert same_spans([json.loads(cell) for cell in scored["entities"]], [expected[i] for i in kept])
    assert set(scored["model_version"].astype(str)) == {"1"}
