"""Helpers of the serving tests (their champion is the session's `champion_project`, tests/conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd


def registry(project: Path):
    from tasks.paths import ProjectPaths
    from tasks.registry import Registry

    return Registry.for_project(ProjectPaths.at(project))


def model_name(project: Path) -> str:
    from tasks.config import load_config

    return load_config(project / "params.yaml").registry.model_name


def offline_predictions(project: Path, version: str, dest: Path) -> list[str]:
    """What the evaluation recorded for `version` on its test split (the MLflow run's predictions.csv)."""
    reg = registry(project)
    info = reg.get_version(model_name(project), version)
    folder = reg.download_run_artifact(info.run_id, "evaluation", dest)
    return pd.read_csv(folder / "predictions.csv")["predicted"].tolist()


def register_variant(project: Path, source_dir: Path, dest: Path, bias_shift: float) -> str:
    """Register a new version (the real registry API): source_dir's model with its classifier bias
    shifted, so its predictions differ; tagged with its files' hashes as the flow tags them."""
    from safetensors.torch import load_file, save_file

    from tasks.promote import model_files_sha256

    shutil.copytree(source_dir, dest)
    weights = load_file(dest / "model.safetensors")
    weights["classifier.bias"] = weights["classifier.bias"] + shifted(weights["classifier.bias"], bias_shift)
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    return register_dir(project, dest, model_files_sha256(dest), "serving-tests")


def register_dir(project: Path, model_dir: Path, files: dict[str, str], experiment: str) -> str:
    """Register model_dir as a new version through the real registry API, tagged with `files` (its
    files' sha256, as the flow tags them); returns the version."""
    from tasks.inference import METADATA_FILE

    meta = json.loads((model_dir / METADATA_FILE).read_text())
    info = registry(project).log_and_register(
        model_name=model_name(project),
        experiment=experiment,
        model_dir=model_dir,
        params={"train.max_length": meta["max_length"]},
        metrics={},
        artifacts=[],
        tags={"weights_sha256": files["model.safetensors"], "model_files_sha256": json.dumps(files)},
    )
    return info.version


def shifted(bias, amount: float):
    """A bias change that favours the first class by `amount` logits."""
    import torch

    delta = torch.zeros_like(bias)
    delta[0] = amount
    return delta
