"""Pure parts of operations: the run form's mapping, the data-watch decision, the ops section."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT


def test_form_parameters_become_overrides_and_conflicts_are_refused():
    from flows.retrain import run_overrides
    from tasks.config import ConfigError

    assert run_overrides(None) == {}
    assert run_overrides({"train.batch_size": 8}, epochs=2, gate_mode=None, data_source="d.csv") == {
        "train.batch_size": 8,
        "train.epochs": 2,
        "data.source": "d.csv",
    }
    assert run_overrides({"train.epochs": 2}, epochs=2) == {"train.epochs": 2}  # agreeing twice is fine
    with pytest.raises(ConfigError, match=r"epochs=3 and overrides\['train.epochs'\]=2 disagree"):
        run_overrides({"train.epochs": 2}, epochs=3)


def test_every_form_parameter_names_a_params_key():
    import inspect

    from flows.retrain import FORM_KEYS, retrain

    signature = set(inspect.signature(retrain.fn).parameters) - {"project_dir", "overrides"}
    assert signature == set(FORM_KEYS)
    assert all(key.count(".") == 1 for key in FORM_KEYS.values())


@pytest.mark.parametrize(
    ("trained", "attempts", "retrain", "fragment"),
    [
        ({}, [], True, "no version yet"),
        ({"champion v1": "aaa"}, [], True, "champion v1: aaa"),
        ({"champion v1": "new"}, [], False, "champion v1 was trained on this data"),
        ({"champion v1": "aaa", "latest v2": "new"}, [], False, "latest v2 was trained on this data"),
        ({"champion v1": "aaa"}, ["Scheduled"], False, "already started (Scheduled)"),
        ({"champion v1": "aaa"}, ["Failed"], False, "already started (Failed)"),
    ],
)
def test_data_watch_retrains_only_for_new_data(trained, attempts, retrain, fragment):
    from tasks.watch import decide

    decision = decide("new", trained, attempts)
    assert decision.retrain is retrain and fragment in decision.reason


def test_ops_settings_are_validated_and_leave_the_params_hash_alone():
    import yaml

    from tasks.config import ConfigError, config_from_dict

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    base = config_from_dict(raw)
    moved = config_from_dict(raw, {"ops.schedule": "30 4 * * 1", "ops.port": 4300})
    assert base.digest() == moved.digest()  # the same model whatever the schedule
    assert base.digest("ops") != moved.digest("ops")
    for key, bad, fragment in (
        ("ops.schedule", "every night", "5-field cron"),
        ("ops.timezone", "Mars/Olympus", "IANA time zone"),
        ("ops.work_pool", "my pool", "ops.work_pool"),
        ("ops.port", 80, "ops.port"),
    ):
        with pytest.raises(ConfigError, match=fragment):
            config_from_dict(raw, {key: bad})


def test_deployment_table_points_at_flows():
    from flows.deployments import CODE_ROOT, DEPLOYMENTS

    for spec in DEPLOYMENTS:
        path, _, function = spec.entrypoint.partition(":")
        assert f"def {function}(" in (CODE_ROOT / path).read_text(), spec.entrypoint


def test_data_watch_hashes_an_image_folder_as_prepare_does(tmp_path):
    """The watch's hash of an image-folder source is what prepare records (so a version trained on the
    folder counts as trained on it): unchanged folder, no run; one more image, a run."""
    import yaml

    from tasks.config import config_from_dict
    from tasks.kinds import task_of
    from tasks.paths import ProjectPaths
    from tasks.prepare import run_prepare
    from tasks.watch import decide, source_hash_task
    from tests.data.images import lfw_folder, noise, png_bytes

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    image = {
        "task.type": "image-classification",
        "data.source": "data/raw/lfw",
        "data.labels": ["face", "other"],
    }
    cfg = config_from_dict(raw, image)
    paths = ProjectPaths.at(tmp_path)
    folder = lfw_folder(tmp_path / "data" / "raw" / "lfw", per_class=6)
    trained = {"champion v1": run_prepare(paths, cfg.data, task_of(cfg)).source_sha256}

    unchanged = decide(source_hash_task.fn(paths, cfg), trained, [])
    assert not unchanged.retrain and "champion v1 was trained on this data" in unchanged.reason
    (folder / "face" / "new.png").write_bytes(png_bytes(noise(7, (25, 25), channels=1)))
    arrived = decide(source_hash_task.fn(paths, cfg), trained, [])
    assert arrived.retrain and "new data" in arrived.reason
    (folder / "face" / "new.png").unlink()
    assert source_hash_task.fn(paths, cfg) == trained["champion v1"]
