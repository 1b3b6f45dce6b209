"""tasks/stages.py is the one declaration of the stages: dvc.yaml, cache keys and run identity follow it."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import yaml

from tasks.stages import STAGES, code_files, params_keys, render, stage_code

ROOT = Path(__file__).resolve().parents[2]


def test_dvc_yaml_is_the_table_rendered():
    # Text equality: any difference in params, deps (code included), outs, metrics or plots fails.
    assert (ROOT / "dvc.yaml").read_text() == render(ROOT), "run `python -m tasks.stages --write`"


def test_dvc_yaml_declares_what_each_stage_reads():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(spec) == list(STAGES)
    # the task type and the task sections are read by every stage whose work depends on the task
    assert spec["validate"]["params"] == ["task", "data.labels", "image", "ner", "validate"]
    assert spec["train"]["params"] == ["task", "data.labels", "image", "ner", "train"]
    for module in ("tasks/train.py", "tasks/transfer.py", "tasks/checkpoints.py", "tasks/download.py"):
        assert module in spec["train"]["deps"]
    assert spec["champion"]["always_changed"] is True
    assert spec["champion"]["outs"] == [{"models/champion.json": {"cache": False}}]
    for name, stage in spec.items():
        assert stage["cmd"] == f"python -m tasks.{name}"
        assert f"tasks/{name}.py" in stage["deps"]
        assert "tasks/serve.py" not in stage["deps"], name  # serving is no stage's code


def test_each_stage_module_has_an_entry_point_and_its_cached_step_uses_its_stage():
    from prefect import Task

    from tasks.caching import StepCache

    for name, stage in STAGES.items():
        module = importlib.import_module(stage.module)
        assert callable(module.main), name
        steps = [v for v in vars(module).values() if isinstance(v, Task) and v.fn.__module__ == stage.module]
        assert steps, f"{name}: no Prefect task for the flow"
        for step in steps:
            if isinstance(step.cache_policy, StepCache):
                assert step.cache_policy.stage == name, step.name


def test_cache_key_parts_are_the_stage_params_and_reads(tmp_path: Path):
    from tasks.caching import TRAIN, VALIDATE
    from tasks.config import load_config
    from tasks.paths import ProjectPaths

    paths, cfg = ProjectPaths.at(tmp_path), load_config(ROOT / "params.yaml")
    # reports/validation and reports/drift only order training (dvc.yaml deps): not part of its key
    assert set(TRAIN.key_parts({"paths": paths, "cfg": cfg})) == {
        "params",
        "data/prepared",
        "models/base.json",
    }
    assert set(VALIDATE.key_parts({"paths": paths, "cfg": cfg})) == {
        "params",
        "data/prepared",
        "models/champion.json",
    }
    moved = load_config(ROOT / "params.yaml", {"data.max_rows": 10, "gate.min_accuracy": 0.1})
    relabelled = load_config(ROOT / "params.yaml", {"data.labels": ["fresh", "rotten"]})
    key = TRAIN.key_parts({"paths": paths, "cfg": cfg})["params"]
    assert TRAIN.key_parts({"paths": paths, "cfg": moved})["params"] == key  # not read by train
    assert TRAIN.key_parts({"paths": paths, "cfg": relabelled})["params"] != key


def test_params_keys_drop_dotted_keys_their_section_covers():
    assert params_keys("train") == ("data.labels", "image", "ner", "task", "train")
    assert params_keys("prepare", "validate") == ("data", "image", "ner", "task", "validate")
    everything = params_keys()
    assert {"data", "model", "train", "evaluate", "gate", "registry.model_name"} <= set(everything)
    assert "data.labels" not in everything and "train.max_length" not in everything
    assert not {"promote", "ops", "registry"} & set(everything)  # they change no model


def test_digest_takes_dotted_keys():
    from tasks.config import ConfigError, load_config

    cfg = load_config(ROOT / "params.yaml")
    more_rows = load_config(ROOT / "params.yaml", {"data.max_rows": 10})
    relabelled = load_config(ROOT / "params.yaml", {"data.labels": ["fresh", "rotten"]})
    assert cfg.digest("data.labels") == more_rows.digest("data.labels") != relabelled.digest("data.labels")
    assert cfg.digest("data") != more_rows.digest("data")
    assert cfg.digest("data.labels", "train") != cfg.digest("train")
    with pytest.raises(ConfigError, match=r"data\.lables: unknown key \(did you mean 'labels'\?\)"):
        cfg.digest("data.lables")


def write(root: Path, name: str, text: str) -> None:
    (root / "tasks" / name).write_text(text)


def test_code_is_the_transitive_closure_of_runtime_imports(tmp_path: Path):
    (tmp_path / "tasks").mkdir()
    write(tmp_path, "__init__.py", "")
    write(
        tmp_path,
        "a.py",
        "from typing import TYPE_CHECKING\nimport json\nfrom tasks import b\n"
        "if TYPE_CHECKING:\n    from tasks.d import Hint\n"
        "def f():\n    from tasks.c import x\n    return x\n",
    )
    write(tmp_path, "b.py", "import tasks.e\n")
    write(tmp_path, "c.py", "x = 1\n")
    write(tmp_path, "d.py", "Hint = int\n")
    write(tmp_path, "e.py", "from . import f\n")
    write(tmp_path, "f.py", "")
    write(tmp_path, "unrelated.py", "import tasks.a\n")
    assert code_files("tasks.a", root=tmp_path) == [
        "tasks/a.py",
        "tasks/b.py",
        "tasks/c.py",  # imported inside a function: still run
        "tasks/e.py",
        "tasks/f.py",  # relative import
    ]  # d.py: for type hints only


def test_editing_a_module_no_stage_imports_changes_no_stage_code(tmp_path: Path):
    from tasks.caching import code_sha256

    shutil.copytree(ROOT / "tasks", tmp_path / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    names = (*STAGES, None)

    def hashes() -> dict[str | None, str]:
        return {n: code_sha256(*([n] if n else []), root=tmp_path) for n in names}

    before = hashes()
    assert before == {n: code_sha256(*([n] if n else [])) for n in names}  # where the copy lives is no part
    assert "tasks/serve.py" not in stage_code()
    with (tmp_path / "tasks" / "serve.py").open("a") as fh:
        fh.write("# an edit to serving\n")
    assert hashes() == before
    with (tmp_path / "tasks" / "transfer.py").open("a") as fh:
        fh.write("# an edit to a module training imports\n")
    after = hashes()
    changed = {n for n in names if after[n] != before[n]}
    # The strategies are training's alone: evaluation and the gate score through the task's forward pass.
    assert changed == {"train", None}


def test_evaluation_round_trips_through_its_file(tmp_path: Path):
    from tasks.evaluate import (
        Budgets,
        Evaluation,
        Retention,
        compute_metrics,
        read_evaluation,
        write_evaluation,
    )
    from tasks.paths import ProjectPaths

    labels = ["rotten", "fresh"]
    challenger = compute_metrics(
        ["fresh", "rotten", "fresh"], ["fresh", "fresh", "fresh"], labels, "challenger"
    )
    champion = compute_metrics(
        ["fresh", "rotten", "fresh"], ["rotten", "rotten", "fresh"], labels, "champion v1"
    )
    old = compute_metrics(["rotten"], ["rotten"], labels, "on the retention set")
    paths = ProjectPaths.at(tmp_path)
    for evaluation in (
        Evaluation(challenger, None, None, Budgets(3.5, 90.1)),
        Evaluation(challenger, champion, "1", Budgets(3.5, 90.1), Retention(old, old)),
    ):
        write_evaluation(paths, evaluation)
        read = read_evaluation(paths)
        assert read == evaluation
        assert list(read.challenger.per_class) == labels  # the order decides the gate's ties


def test_champion_manifest_round_trips_and_is_stable(tmp_path: Path):
    from tasks.champion import Champion, load_champion, write_manifest
    from tasks.paths import ProjectPaths

    paths = ProjectPaths.at(tmp_path)
    with pytest.raises(FileNotFoundError, match="run the champion stage first"):
        load_champion(paths)
    write_manifest(paths, "m", None)
    assert load_champion(paths) is None
    model_dir = paths.registry_cache / "m" / "v3" / "model"
    model_dir.mkdir(parents=True)
    champion = Champion("3", model_dir, None, {"params_hash": "p"}, 0.8)
    write_manifest(paths, "m", champion)
    first = paths.champion_manifest.read_bytes()
    write_manifest(paths, "m", champion)
    assert paths.champion_manifest.read_bytes() == first  # DVC re-runs nothing downstream
    assert str(tmp_path) not in first.decode()  # relative paths: the same in every clone
    assert load_champion(paths) == champion
    shutil.rmtree(model_dir)
    with pytest.raises(FileNotFoundError, match="dvc repro champion"):
        load_champion(paths)
