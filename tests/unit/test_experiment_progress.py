"""The evidence command's progress record: what a resumed run takes, and what it sets aside."""

from __future__ import annotations

from pathlib import Path

from tasks.experiment import ArmResult
from tasks.experiment_progress import clear, finished_arms, progress_file, record_arm

SETTINGS = {"params_sha256": "ab" * 32, "options": {"min_steps": 60, "scratch_rates": (1e-4, 1e-3)}}


def arm(name: str, accuracy: float) -> ArmResult:
    return ArmResult(
        name, "learning-curve", name.split("@")[0], "full", 500, 4, accuracy, 0.8, 61.5, 10, 10, {}
    )


def test_a_record_with_the_same_settings_gives_back_its_arms(tmp_path: Path):
    assert finished_arms(tmp_path, SETTINGS) == {}  # no record yet
    record_arm(tmp_path, SETTINGS, [arm("pretrained@500", 0.7286)])
    record_arm(tmp_path, SETTINGS, [arm("pretrained@500", 0.7286), arm("scratch@500", 0.6334)])
    assert finished_arms(tmp_path, SETTINGS) == {
        "pretrained@500": arm("pretrained@500", 0.7286),
        "scratch@500": arm("scratch@500", 0.6334),
    }
    assert [p.name for p in tmp_path.iterdir()] == [".progress.json"]  # no temporary file left behind
    clear(tmp_path)
    assert not progress_file(tmp_path).exists()


def test_a_record_made_with_other_settings_or_damaged_is_set_aside(tmp_path: Path):
    record_arm(tmp_path, SETTINGS, [arm("pretrained@500", 0.7286)])
    other = {**SETTINGS, "options": {"min_steps": 60, "scratch_rates": (3e-4,)}}
    assert finished_arms(tmp_path, other) == {}
    progress_file(tmp_path).write_text('{"settings": {"params_sha256": "ab"')  # cut off mid-write
    assert finished_arms(tmp_path, SETTINGS) == {}
