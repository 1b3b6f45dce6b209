"""dvc.yaml and tasks/paths.py name the same files, and each stage runs the module of its name."""

from pathlib import Path

import yaml

from tasks.paths import ProjectPaths

ROOT = Path(__file__).resolve().parents[2]


def test_dvc_stages_match_paths_and_modules():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    paths = ProjectPaths.at(ROOT)
    outs = {
        "prepare": [paths.prepared_dir],
        "validate": [paths.validation_dir],
        "download": [paths.base_manifest],
        "train": [paths.challenger_dir],
    }
    for stage, expected in outs.items():
        assert stages[stage]["outs"] == [paths.rel(p) for p in expected]
        assert stages[stage]["cmd"] == f"python -m tasks.{stage}"
        assert f"tasks/{stage}.py" in stages[stage]["deps"]
        assert (ROOT / "tasks" / f"{stage}.py").is_file()
    assert stages["evaluate"]["metrics"] == [paths.rel(paths.metrics_file)]
    plots = [next(iter(p)) if isinstance(p, dict) else p for p in stages["evaluate"]["plots"]]
    assert plots == [paths.rel(paths.predictions_file), paths.rel(paths.confusion_png)]
    assert paths.rel(paths.raw_dir) in stages["prepare"]["deps"]


def test_pipeline_stage_list_matches_dvc_yaml():
    from tasks.versioning import PIPELINE_STAGES

    assert tuple(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]) == PIPELINE_STAGES
