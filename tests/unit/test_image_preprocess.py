"""Preprocessing: the same tensors as transformers' own image processors for the same config, the configs
written load with AutoImageProcessor, and augmentation stays inside the image and varies only in training."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.kinds.image_preprocess import BICUBIC, Augmentation, Preprocessing, collate, random_crop_box
from tests.data.images import noise

WARP = Preprocessing(height=48, width=40, resize_edge=None, mean=(0.5,) * 3, std=(0.5,) * 3, resample=2)
CROP = Preprocessing(
    height=56,
    width=56,
    resize_edge=64,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    resample=BICUBIC,
)


@pytest.mark.parametrize("prep", [WARP, CROP], ids=["warp", "crop"])
@pytest.mark.parametrize("shape", [(90, 70), (70, 90)], ids=["portrait", "landscape"])
def test_tensors_match_transformers_image_processor(prep, shape, tmp_path):
    from transformers import AutoImageProcessor

    prep.save(tmp_path)
    assert Preprocessing.from_folder(tmp_path) == prep
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    image = Image.fromarray(noise(5, shape))
    theirs = torch.as_tensor(np.asarray(processor(image, return_tensors="np")["pixel_values"]))
    ours = collate([image], prep)
    assert ours.shape == (1, 3, prep.height, prep.width)
    torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=1e-5)


def test_hub_style_configs_are_read():
    convnext = {"size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 3, "image_mean": [0.4] * 3}
    assert Preprocessing.from_config(convnext).resize_edge == 256
    clip = {
        "size": {"shortest_edge": 224},
        "do_center_crop": True,
        "crop_size": {"height": 200, "width": 210},
    }
    assert (Preprocessing.from_config(clip).height, Preprocessing.from_config(clip).width) == (200, 210)
    vit = {"size": {"height": 384, "width": 384}}
    assert Preprocessing.from_config(vit).resize_edge is None
    with pytest.raises(ValueError, match="unsupported size"):
        Preprocessing.from_config({"size": {"longest_edge": 5}})


def test_with_size_keeps_the_crop_share():
    assert CROP.with_size(112).resize_edge == 128
    assert WARP.with_size(64).height == 64 and WARP.with_size(64).resize_edge is None


@pytest.mark.parametrize("seed", range(20))
def test_random_crops_stay_inside_and_cover_the_asked_area(seed):
    rng = random.Random(seed)
    width, height = rng.randint(5, 300), rng.randint(5, 300)
    left, top, right, bottom = random_crop_box(width, height, 0.5, rng)
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    assert (right - left) * (bottom - top) <= width * height + 1e-6


def test_augmentation_only_when_given():
    image = Image.fromarray(noise(6, (40, 40)))
    augmentation = Augmentation(crop_scale=0.5, flip=True, seed=1)
    plain = collate([image] * 4, WARP)
    assert all(torch.equal(plain[0], row) for row in plain)  # evaluation: deterministic
    rngs = [augmentation.rng(0, i) for i in range(4)]
    augmented = collate([image] * 4, WARP, augmentation, rngs)
    assert augmented.shape == plain.shape
    assert len({row.sum().item() for row in augmented}) > 1  # each example its own crop
    off = Augmentation(crop_scale=1.0, flip=False, seed=1)
    torch.testing.assert_close(collate([image], WARP, off, [off.rng(0, 0)]), plain[:1])
