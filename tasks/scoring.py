"""batch scoring: label every row of a file with a registered version (by default the champion).

The output is the input's rows with the task's prediction columns (``prediction``, ``score`` and
``prob_<label>`` for a classifier; ``entities`` for a tagger) plus
``model_version`` and ``input_sha256``, written in the input's format; a JSON sidecar
(``<output>.json``) records the model, its verified weights hash, the input's hash and the row count,
so any prediction file can be traced to the exact model and data that produced it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.kinds import load_task
from tasks.kinds.scoring_input import ScoringInput, file_format
from tasks.paths import ProjectPaths
from tasks.prepare import file_sha256
from tasks.registry import CHAMPION, Registry, RegistryError
from tasks.serve import LoadedModel, load_version

if TYPE_CHECKING:
    from tasks.config import Config
    from tasks.kinds.base import TaskKind

log = logging.getLogger("transferline.scoring")

SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class ScoringResult:
    output: Path
    sidecar: Path
    rows: int
    model: str
    version: str
    weights_sha256: str
    input_sha256: str
    seconds: float


def default_output(input_path: Path) -> Path:
    """reviews.csv -> reviews.predictions.csv, beside the input."""
    return input_path.with_name(f"{input_path.stem}.predictions{input_path.suffix}")


def score_frame(
    model: LoadedModel, frame: pd.DataFrame, text_column: str, batch_size: int, input_sha256: str
) -> pd.DataFrame:
    """The input rows with the task's prediction columns (classification: prediction, score,
    prob_<label>; entities: entities as JSON), model_version and input_sha256."""
    predictions = model.predict(frame[text_column].tolist(), batch_size)
    out = frame.copy()
    for column, values in model.predictor.kind.prediction_columns(predictions, list(model.labels)).items():
        out[column] = values
    out["model_version"] = model.version
    out["input_sha256"] = input_sha256
    return out


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write in the format of path's suffix, atomically (a reader never sees half a file)."""
    fmt = file_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == ".csv":
        frame.to_csv(tmp, index=False)
    elif fmt == ".parquet":
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    os.replace(tmp, path)


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + SIDECAR_SUFFIX)


@task(name="load-model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def load_model_task(
    registry: Registry, cfg: Config, paths: ProjectPaths, alias: str = CHAMPION
) -> LoadedModel:
    """The version `alias` points at, downloaded and verified against its recorded hashes."""
    info = registry.get_alias(cfg.registry.model_name, alias)
    if info is None:
        raise RegistryError(
            f"{cfg.registry.model_name} has no {alias!r} version in {registry.tracking_uri}: run a "
            "retraining first (`transferline run`)"
        )
    model = load_version(registry, info, paths.serving_cache, cfg.train.max_length)
    log.info("scoring with %s v%s (weights sha256 %s)", model.name, model.version, model.weights_sha256[:12])
    return model


@task(name="read-input", cache_policy=NO_CACHE)
def read_input_task(input_path: Path, text_column: str, kind: TaskKind | None = None) -> ScoringInput:
    """Read and check the input before any model is downloaded: bad input fails fast. The task `kind`
    (default text) says what the input is: a table of texts, or a folder / list of images."""
    return (kind or load_task("text-classification", None)).scoring_input(input_path, text_column)


@task(name="score-file", cache_policy=NO_CACHE)
def score_file_task(
    model: LoadedModel, source: ScoringInput, output_path: Path, text_column: str, batch_size: int
) -> ScoringResult:
    """Score the input rows into output_path and write the JSON sidecar beside it."""
    started = time.perf_counter()
    scored = score_frame(model, source.frame, source.column, batch_size, source.sha256)
    write_table(scored, output_path)
    seconds = time.perf_counter() - started
    result = ScoringResult(
        output=output_path,
        sidecar=sidecar_path(output_path),
        rows=len(scored),
        model=model.name,
        version=model.version,
        weights_sha256=model.weights_sha256,
        input_sha256=source.sha256,
        seconds=seconds,
    )
    record = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()},
        "input": str(source.path),
        "text_column": source.column,
        "run_id": model.run_id,
        "labels": list(model.labels),
        "output_sha256": file_sha256(output_path),
    }
    result.sidecar.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    log.info(
        "scored %d rows of %s with v%s in %.1f s -> %s",
        result.rows, source.path, model.version, seconds, output_path,
    )  # fmt: skip
    return result
