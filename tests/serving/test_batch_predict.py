"""`transferline batch-predict` (the batch-predict Prefect flow) on the session's real champion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import cli
from tests.serving.conftest import model_name, offline_predictions, registry

pytestmark = pytest.mark.pipeline


def test_batch_predict_scores_a_file_with_the_champion(champion_project: Path, tmp_path: Path, capsys):
    test = pd.read_parquet(champion_project / "data" / "prepared" / "test.parquet")
    source = tmp_path / "incoming.csv"
    test.rename(columns={"text": "review"}).assign(id=range(len(test))).to_csv(source, index=False)
    output = tmp_path / "out" / "scored.jsonl"  # output format follows its suffix

    code = cli("batch-predict", str(source), "--text-column", "review", "--output", str(output),
               "--project", str(champion_project))  # fmt: skip
    assert code == 0, capsys.readouterr().err
    scored = pd.read_json(output, lines=True, dtype={"model_version": str})
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert scored["id"].tolist() == list(range(len(test)))  # every input row, in order, columns kept
    assert scored["prediction"].tolist() == offline_predictions(champion_project, "1", tmp_path / "eval")
    assert set(scored["model_version"]) == {"1"} and set(scored["input_sha256"]) == {sha}
    probs = scored[[c for c in scored.columns if c.startswith("prob_")]]
    assert probs.sum(axis=1).sub(1).abs().max() < 1e-5
    sidecar = json.loads((tmp_path / "out" / "scored.jsonl.json").read_text())
    recorded = registry(champion_project).get_version(model_name(champion_project), "1").tags
    assert sidecar["version"] == "1" and sidecar["input_sha256"] == sha and sidecar["rows"] == len(test)
    assert sidecar["weights_sha256"] == recorded["weights_sha256"]
    assert sidecar["output_sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("content", "name", "args", "message"),
    [
        ("text,label\nfine,fresh\n", "in.csv", ["--text-column", "review"], "no column 'review'"),
        ("text,id\nfine,1\n,2\n", "in.csv", [], "empty or not text"),
        ('{"text": 1}\n', "in.jsonl", [], "empty or not text"),
        ("text\nfine\n", "in.txt", [], "unknown format"),
    ],
)
def test_batch_predict_refuses_bad_input_with_exit_2(
    champion_project: Path, tmp_path: Path, capsys, content: str, name: str, args: list[str], message: str
):
    from tasks.kinds.scoring_input import ScoringInputError, read_table

    source = tmp_path / name
    source.write_text(content)
    with pytest.raises(ScoringInputError, match=message):  # the core says what is wrong, ...
        read_table(source, args[1] if args else "text")
    # ... and the command exits 2 without writing anything: an unknown format before the flow starts, the
    # rest in the flow's first task, before any model is downloaded
    if name.endswith(".txt") or "review" in args:
        assert cli("batch-predict", str(source), "--project", str(champion_project), *args) == 2
        assert message in capsys.readouterr().err
        assert not list(tmp_path.glob("*.predictions.*"))
