"""dvc.yaml and tasks/paths.py name the same files, each stage runs the module of its name, no function
of the pipeline's code is too long to read, and the README stays short."""

import ast
import re
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


MAX_FUNCTION_LINES = 80  # a function longer than a screen is read in pieces: split it into named steps


def long_functions(source: str, where: str) -> list[str]:
    """`where:line name (n lines)` for each function or method in `source` longer than MAX_FUNCTION_LINES
    (from its `def` to its last line, docstring included)."""
    found = []
    for node in ast.walk(ast.parse(source, filename=where)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_the_length_check_counts_a_function_from_def_to_its_last_line():
    def function(name: str, lines: int, indent: str = "") -> str:
        body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 1))
        return f"{indent}def {name}():\n{body}"

    at_limit = function("at_limit", MAX_FUNCTION_LINES)
    method = "class C:\n" + function("method", MAX_FUNCTION_LINES + 1, indent="    ")
    nested = "def outer():\n" + function("inner", MAX_FUNCTION_LINES + 1, indent="    ")
    assert long_functions(at_limit, "m.py") == []
    assert long_functions(method, "m.py") == [f"m.py:2 method ({MAX_FUNCTION_LINES + 1} lines)"]
    assert f"m.py:2 inner ({MAX_FUNCTION_LINES + 1} lines)" in long_functions(nested, "m.py")


def test_no_function_in_tasks_or_flows_is_longer_than_80_lines():
    modules = sorted([*(ROOT / "tasks").rglob("*.py"), *(ROOT / "flows").rglob("*.py")])
    assert len(modules) > 20  # the walk sees the real packages
    found = [f for path in modules for f in long_functions(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {found}"


def test_the_readme_stays_a_front_door():
    """Details belong in docs/: the README keeps to 250 lines and every page it links exists."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).exists(), target
