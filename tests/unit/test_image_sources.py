"""Image sources -> prepared snapshot: the folder layout, a table of paths, a saved Hub dataset and the
Fashion-MNIST sample; content-addressed files, one file in one split, bad files kept for validation."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pytest

from tasks.config import DataConfig
from tasks.kinds import fashion_mnist
from tasks.kinds.image_sources import (
    IMAGES_DIR,
    ImageSourceError,
    prepare_images,
    read_folder,
    read_hf_images,
    read_image_source,
    read_listing,
    write_snapshot,
)
from tests.data.images import lfw_folder, noise, png_bytes, truncated

MAX_PIXELS = 1_000_000


def data_config(**overrides: object) -> DataConfig:
    values = {
        "source": "data/raw/images",
        "text_column": "text",
        "label_column": "label",
        "labels": ["face", "other"],
        "label_map": {},
        "max_rows": None,
        "val_size": 0.2,
        "test_size": 0.2,
        "drop_duplicates": True,
        "seed": 0,
    }
    return DataConfig(**{**values, **overrides})


def test_folder_source_labels_by_sub_folder_and_keeps_non_images(tmp_path, caplog):
    root = lfw_folder(tmp_path / "lfw", per_class=3)
    (root / "face" / "notes.txt").write_text("not an image")
    (root / "face" / ".DS_Store").write_bytes(b"\0\0")
    (root / "README.md").write_text("# faces")
    source = read_folder(root, "lfw")
    assert sorted(source.frame["origin"]) == [
        "face/000.png", "face/001.png", "face/002.png", "face/notes.txt",
        "other/100.png", "other/101.png", "other/102.png",
    ]  # fmt: skip
    assert set(source.frame["label"]) == {"face", "other"}
    assert "README.md" in caplog.text  # loose files are named, not silently used
    assert read_folder(root, "lfw").identity == source.identity
    (root / "other" / "100.png").write_bytes(png_bytes(noise(9)))
    assert read_folder(root, "lfw").identity != source.identity


def test_table_source_resolves_paths_relative_to_the_table(tmp_path):
    root = lfw_folder(tmp_path / "lfw", per_class=2)
    table = tmp_path / "lists" / "labels.csv"
    table.parent.mkdir()
    table.write_text("file,kind\n../lfw/face/000.png,face\n../lfw/other/101.png,other\n")
    source = read_listing(table, "file", "kind", "labels.csv")
    assert list(source.frame["file"]) == [str(root / "face/000.png"), str(root / "other/101.png")]
    table.write_text("file,kind\n../lfw/face/000.png,face\nmissing.png,other\n")
    with pytest.raises(ImageSourceError, match=r"1 image file.*'missing\.png'"):
        read_listing(table, "file", "kind", "labels.csv")
    with pytest.raises(ImageSourceError, match="no column 'path'"):
        read_listing(table, "path", "kind", "labels.csv")


def test_saved_hub_dataset_with_an_image_column(tmp_path):
    import datasets

    images = [png_bytes(noise(i, (12, 16))) for i in range(6)]
    features = datasets.Features(
        {"img": datasets.Image(), "kind": datasets.ClassLabel(names=["face", "other"])}
    )
    ds = datasets.Dataset.from_dict(
        {"img": [{"bytes": b, "path": None} for b in images], "kind": [0, 1] * 3}, features=features
    )
    ds.save_to_disk(tmp_path / "saved")
    source = read_hf_images(f"hf-dataset://{tmp_path / 'saved'}#train", "img", "kind")
    assert list(source.frame["payload"]) == images
    assert list(source.frame["label"]) == ["face", "other"] * 3


def test_snapshot_holds_each_file_once_named_by_content(tmp_path):
    root = lfw_folder(tmp_path / "lfw", per_class=20)
    (root / "face" / "copy.png").write_bytes(
        (root / "other" / "100.png").read_bytes()
    )  # same bytes, two labels
    (root / "other" / "broken.png").write_bytes(truncated(png_bytes(noise(3, (64, 64)))))
    source = read_image_source("lfw", tmp_path, "image", "label")
    splits, dropped = prepare_images(source, data_config())
    assert dropped == 1
    frames = write_snapshot(splits, tmp_path / "prepared", MAX_PIXELS)
    every = pd.concat(frames.values())
    assert len(every) == 41 and every["sha256"].is_unique
    for row in every.itertuples():
        data = (tmp_path / "prepared" / row.image).read_bytes()
        assert row.image.startswith(f"{IMAGES_DIR}/{row.sha256[:2]}/{row.sha256}")
        assert hashlib.sha256(data).hexdigest() == row.sha256
    broken = every[every["origin"] == "other/broken.png"].iloc[0]
    assert broken["error"] == "truncated"  # kept: validation names it
    assert set(pd.read_parquet(tmp_path / "prepared" / "train.parquet").columns) >= {
        "image",
        "label",
        "width",
        "brightness",
    }
    again = write_snapshot(prepare_images(source, data_config())[0], tmp_path / "again", MAX_PIXELS)
    for name, frame in frames.items():
        pd.testing.assert_frame_equal(again[name], frame)  # same source, same snapshot


def test_label_map_and_subsample_apply_to_images(tmp_path):
    lfw_folder(tmp_path / "lfw", per_class=20)
    source = read_image_source(str(tmp_path / "lfw"), tmp_path, "image", "label")
    cfg = data_config(label_map={"other": "background"}, labels=["face", "background"], max_rows=20)
    splits, _ = prepare_images(source, cfg)
    labels = pd.concat(splits.values())["label"]
    assert len(labels) == 20 and labels.value_counts().to_dict() == {"face": 10, "background": 10}


def test_fashion_mnist_sample_is_a_fixed_stratified_subset():
    images = fashion_mnist.load(per_class=3)
    assert len(images) == 30 and {i.label for i in images} == set(fashion_mnist.CLASSES)
    assert images == fashion_mnist.load(per_class=3)  # the same files on every run and machine
    from PIL import Image

    first = Image.open(io.BytesIO(images[0].png))
    assert (first.format, first.mode, first.size) == ("PNG", "L", (28, 28))
    train = fashion_mnist.read_idx(fashion_mnist.DATASET_DIR / fashion_mnist.PARTS[0][1])
    assert train.shape == (60_000,) and np.bincount(train).tolist() == [6_000] * 10


def test_a_missing_sample_package_says_how_to_install_it(tmp_path):
    with pytest.raises(fashion_mnist.SampleMissing, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load(1, directory=tmp_path)


def test_unknown_sample_and_missing_source_are_refused(tmp_path):
    with pytest.raises(ImageSourceError, match="fashion-mnist"):
        read_image_source("sample://mnist", tmp_path, "image", "label")
    with pytest.raises(ImageSourceError, match="does not exist"):
        read_image_source("data/raw/none", tmp_path, "image", "label")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSourceError, match="no images"):
        read_image_source("empty", tmp_path, "image", "label")
