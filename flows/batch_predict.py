"""The batch-scoring flow: load the champion (verified against its recorded hashes) -> score a file.

Deployable as ``flows/batch_predict.py:batch_predict``; every parameter is typed and described, so the
Prefect UI's run form and ``prefect deployment run batch-predict/<name> -p input_path=...`` show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks.config import load_config
from tasks.kinds import task_of
from tasks.kinds.scoring_input import file_format
from tasks.paths import ProjectPaths
from tasks.registry import CHAMPION, Registry
from tasks.scoring import default_output, load_model_task, read_input_task, score_file_task


@dataclass(frozen=True)
class BatchSummary:
    output: str
    sidecar: str
    rows: int
    model: str
    version: str
    input_sha256: str


@flow(name="batch-predict", description=__doc__)
def batch_predict(
    input_path: str,
    output_path: str | None = None,
    text_column: str = "text",
    project_dir: str = ".",
    alias: str = CHAMPION,
    overrides: dict[str, Any] | None = None,
) -> BatchSummary:
    """Label every row of a csv, parquet or jsonl file (text), or every image of a folder or list
    (image classification), with the registered model `alias` points at.

    Args:
        input_path: the file to score (.csv, .parquet or .jsonl; images: a folder, a .txt list of paths,
            or a table with the image column), relative to project_dir or absolute.
        output_path: where to write the predictions, same formats (default: <input>.predictions.<ext>);
            a JSON sidecar <output>.json records the model version, weights and input hashes.
        text_column: the input column that holds the texts.
        project_dir: the transferline project (its params.yaml names the registered model).
        alias: the registry alias whose version scores the file.
        overrides: params.yaml keys to change, dotted, e.g. {"registry.model_name": "reviews-v2"}.
    """
    paths = ProjectPaths.at(project_dir)
    cfg = load_config(paths.params, overrides)
    source = Path(input_path) if Path(input_path).is_absolute() else paths.root / input_path
    target = Path(output_path) if output_path else default_output(source)
    if not target.is_absolute():
        target = paths.root / target
    file_format(target)
    rows = read_input_task(source, text_column, task_of(cfg))  # bad input fails before a model download
    model = load_model_task(Registry.for_project(paths), cfg, paths, alias)
    result = score_file_task(model, rows, target, text_column, cfg.evaluate.batch_size)
    create_markdown_artifact(
        key="batch-predict",
        markdown=f"# Batch predictions\n\n{result.rows} rows of `{source}` scored by {result.model} "
        f"v{result.version} (weights sha256 `{result.weights_sha256[:16]}…`; input sha256 "
        f"`{result.input_sha256[:16]}…`) -> `{result.output}`\n",
        description="Batch scoring run",
    )
    return BatchSummary(
        str(result.output),
        str(result.sidecar),
        result.rows,
        result.model,
        result.version,
        result.input_sha256,
    )
