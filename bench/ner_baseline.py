"""The classical baseline of named-entity recognition against a token-classification project's champion.

A linear-chain CRF (tasks/kinds/token_crf.py: hand-made features of each word and its neighbours) is
trained on the project's prepared training split; its regularisation (c1, c2) is chosen on the validation
split from a grid, and only the chosen CRF is scored on the test split. The champion's test entity F1 is
what its run recorded at registration, on the same test split when the prepared data are the ones it was
trained on (the JSON says whether they are). Both are micro entity F1, exact span and type (seqeval).

    make run-ner && python bench/ner_baseline.py      # the example project: examples/token-classification
    python bench/ner_baseline.py --project path/to/project --c1 0.05,0.2 --c2 0.01,0.1

Last line: {"crf_c1", "crf_c2", "crf_val_f1", "crf_test_f1", "crf_seconds", "champion_version",
"champion_test_f1", "champion_minus_crf", "champion_beats_crf", "same_data"}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_PROJECT = ROOT / "examples" / "token-classification"


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def crf_on_validation(splits: dict, types: list[str], grid: list[tuple[float, float]]) -> tuple[dict, float]:
    """The (c1, c2) whose CRF scores the best validation entity F1, that CRF's test F1 and the seconds: the
    evidence's classical arm for taggers (token_crf.CrfBaseline) on `grid`."""
    from tasks.kinds.token_crf import CrfBaseline

    started, baseline = time.perf_counter(), CrfBaseline(types, tuple(grid))
    fitted = baseline.fit(splits["train"], splits["validation"], seed=0)
    for cell in fitted.grid:
        print(f"  CRF c1={cell['c1']:g} c2={cell['c2']:g}: validation entity F1 {cell['val_accuracy']:.4f}")
    test_f1 = baseline.accuracy(fitted.model, splits["test"])
    crf = {**fitted.settings, "val_f1": fitted.val_accuracy, "test_f1": test_f1}
    return crf, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--project", type=Path, default=DEFAULT_PROJECT, help="a token-classification project folder"
    )
    from tasks.kinds.token_crf import C1_GRID, C2_GRID

    parser.add_argument(
        "--c1", default=",".join(map(str, C1_GRID)), help="L1 strengths tried (comma-separated)"
    )
    parser.add_argument(
        "--c2", default=",".join(map(str, C2_GRID)), help="L2 strengths tried (comma-separated)"
    )
    args = parser.parse_args()

    from tasks.config import load_config
    from tasks.paths import ProjectPaths
    from tasks.prepare import data_sha256, read_split
    from tasks.registry import CHAMPION, Registry

    project = args.project.resolve()
    cfg, paths = load_config(project / "params.yaml"), ProjectPaths.at(project)
    if cfg.task.type != "token-classification":
        parser.error(f"{project} is a {cfg.task.type} project; this compares entity taggers")
    try:
        splits = {name: read_split(paths, name) for name in ("train", "validation", "test")}
    except FileNotFoundError as err:
        parser.error(f"{err} (run `make run-ner`, or `transferline run --project {project}`, first)")
    champion = Registry.for_project(paths).get_alias(cfg.registry.model_name, CHAMPION)
    if champion is None:
        parser.error(f"{cfg.registry.model_name} has no champion: run `transferline run --project {project}`")

    grid = list(itertools.product(floats(args.c1), floats(args.c2)))
    print(f"CRF on {project.name}: {', '.join(f'{k} {len(v)}' for k, v in splits.items())} sentences")
    crf, seconds = crf_on_validation(splits, list(cfg.data.labels), grid)
    champion_f1 = champion.metrics.get("test_f1")
    same = champion.tags.get("data_sha256") == data_sha256(paths)
    gap = None if champion_f1 is None else champion_f1 - crf["test_f1"]
    shown = "-" if champion_f1 is None else f"{champion_f1:.4f}"
    print(f"\n| model | test entity F1 |\n|---|---|\n| CRF (c1={crf['c1']:g}, c2={crf['c2']:g}) | "
          f"{crf['test_f1']:.4f} |\n| champion v{champion.version} | {shown} |")  # fmt: skip
    if not same:
        print("note: the prepared data are not the champion's: the two test F1s are not on the same split")
    out = {
        "crf_c1": crf["c1"],
        "crf_c2": crf["c2"],
        "crf_val_f1": round(crf["val_f1"], 4),
        "crf_test_f1": round(crf["test_f1"], 4),
        "crf_seconds": round(seconds, 1),
        "champion_version": champion.version,
        "champion_test_f1": None if champion_f1 is None else round(champion_f1, 4),
        "champion_minus_crf": None if gap is None else round(gap, 4),
        "champion_beats_crf": gap is not None and gap > 0 and same,
        "same_data": same,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
