"""The image GX suite on real snapshots: clean images pass; corrupt, truncated, empty, non-image and
oversized files fail with each file named and what to do; the same image in two splits fails; against a
champion's data, class shares, sizes and brightness are compared."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.config import ValidateConfig
from tasks.kinds.image_sources import prepare_images, read_image_source, write_snapshot
from tasks.kinds.image_validate import bad_images, inspect_snapshot, validate_images
from tests.data.images import bad_crc, bomb_png, lfw_folder, noise, png_bytes, truncated
from tests.unit.test_image_kind import options
from tests.unit.test_image_sources import data_config

LABELS = ["face", "other"]
VALIDATE = ValidateConfig(
    min_text_chars=1,
    max_text_chars=1000,
    max_duplicate_rate=0.0,
    min_rows_per_class=5,
    reference_label_tolerance=0.2,
    reference_length_tolerance=0.5,
    reference_min_vocab_coverage=0.5,
)


def snapshot(tmp_path, extra=None, name="prepared", **data):
    root = lfw_folder(tmp_path / f"src-{name}", per_class=15)
    for relative, content in (extra or {}).items():
        (root / relative).write_bytes(content)
    splits, _ = prepare_images(read_image_source(str(root), tmp_path, "image", "label"), data_config(**data))
    out = tmp_path / name
    return write_snapshot(splits, out, options().max_pixels), out


def test_clean_images_pass(tmp_path):
    frames, root = snapshot(tmp_path)
    report = validate_images(frames, root, LABELS, VALIDATE, options(), docs_dir=tmp_path / "docs")
    assert report.success, report.error_message()
    assert report.rows == {"train": 18, "validation": 6, "test": 6}
    assert (tmp_path / "docs" / "index.html").is_file()
    assert report.reference_rows is None


def test_bad_files_are_refused_and_named_with_what_to_do(tmp_path):
    broken = {
        "face/truncated.png": truncated(png_bytes(noise(1, (64, 64)))),
        "face/empty.jpg": b"",
        "other/notes.txt": b"these are my labels",
        "other/crc.png": bad_crc(png_bytes(noise(2))),
        "other/bomb.png": bomb_png(12_000, 10_000),
        "other/tiny.png": png_bytes(noise(3, (4, 4))),
    }
    frames, root = snapshot(tmp_path, broken)
    report = validate_images(frames, root, LABELS, VALIDATE, options())
    assert not report.success
    failed = {(o.table, o.column) for o in report.failures}
    assert {("images", "error"), ("images", "bytes"), ("images", "pixels"), ("images", "width")} <= failed
    message = report.error_message()
    for name in broken:
        assert name in message, f"{name} is not named:\n{message}"
    assert "re-export or replace each one" in message and "image.min_side / max_side" in message
    errors = {o.column: o for o in report.failures if o.table == "images"}
    assert errors["error"].unexpected_count == 5  # all but the tiny (complete) image
    listed = bad_images(inspect_snapshot(frames, root, options().max_pixels))
    assert sorted(listed["origin"]) == sorted(set(broken) - {"other/tiny.png"})


def test_a_file_changed_after_prepare_is_refused(tmp_path):
    frames, root = snapshot(tmp_path)
    victim = root / frames["test"]["image"].iloc[0]
    victim.write_bytes(png_bytes(noise(4)))
    report = validate_images(frames, root, LABELS, VALIDATE, options())
    assert "changed since prepare" in report.error_message()


def test_the_same_image_in_two_splits_is_refused(tmp_path):
    copies = {f"face/copy{i}.png": png_bytes(noise(5)) for i in range(6)}
    frames, root = snapshot(tmp_path, copies, drop_duplicates=False)
    report = validate_images(frames, root, LABELS, VALIDATE, options())
    failed = {o.table for o in report.failures}
    assert "split_overlap" in failed
    assert "face/copy" in report.error_message() and "data.drop_duplicates: true" in report.error_message()


def test_against_the_champions_data(tmp_path):
    frames, root = snapshot(tmp_path)
    reference = frames["train"]
    same = validate_images(frames, root, LABELS, VALIDATE, options(), reference=reference)
    assert same.success and same.reference_rows == len(reference)
    assert {o.table for o in same.outcomes} >= {
        "reference_label_shares",
        "reference_image_sizes",
        "reference_brightness",
    }

    bigger = reference.assign(width=reference["width"] * 4, height=reference["height"] * 4)
    darker = reference.assign(brightness=np.clip(reference["brightness"] + 0.4, 0, 1))
    shifted = pd.concat([reference[reference["label"] == "face"]] * 3 + [reference])
    for champion, table, key in (
        (bigger, "reference_image_sizes", "image.reference_size_tolerance"),
        (darker, "reference_brightness", "image.reference_brightness_tolerance"),
        (shifted, "reference_label_shares", "validate.reference_label_tolerance"),
    ):
        report = validate_images(frames, root, LABELS, VALIDATE, options(), reference=champion)
        assert [o.table for o in report.failures] == [table]
        assert key in report.error_message()


def test_a_text_champion_is_not_a_reference(tmp_path):
    frames, root = snapshot(tmp_path)
    with pytest.raises(ValueError, match="trained for image classification"):
        validate_images(
            frames,
            root,
            LABELS,
            VALIDATE,
            options(),
            reference=pd.DataFrame({"text": ["a"], "label": ["face"]}),
        )
