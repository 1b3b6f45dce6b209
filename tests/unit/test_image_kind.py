"""The task table and interface, and the image task through it: a fine-tuning smoke test (the loss falls on
real images), serving requests (base64 JSON, multipart) and batch-scoring inputs."""

from __future__ import annotations

import base64
import inspect
import json
import random

import numpy as np
import pytest
import torch
import transformers

from tasks.kinds import TASKS, load_task
from tasks.kinds.base import TaskKind
from tasks.kinds.image_config import ImageConfig
from tasks.kinds.image_requests import ImageLimits, ImageRequestError, parse_request, scoring_files
from tests.data.images import converted_model, lfw_folder, noise, png_bytes


def options(**overrides: object) -> ImageConfig:
    """The image section as the example project sets it."""
    values = {
        "column": "image",
        "size": 64,
        "augment_crop_scale": 0.8,
        "augment_flip": True,
        "formats": ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"],
        "modes": ["1", "L", "LA", "P", "RGB", "RGBA"],
        "min_side": 8,
        "max_side": 10_000,
        "max_pixels": 40_000_000,
        "reference_size_tolerance": 0.5,
        "reference_brightness_tolerance": 0.15,
    }
    return ImageConfig(**{**values, **overrides})


def interface_members() -> list[str]:
    """What tasks/kinds/base.py says a task provides: its attributes and methods."""
    attributes = list(inspect.get_annotations(TaskKind))
    methods = [n for n, v in vars(TaskKind).items() if inspect.isfunction(v) and not n.startswith("_")]
    return attributes + methods


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_in_the_table_provides_the_whole_interface(name):
    spec = TASKS[name]
    kind = load_task(name, options())
    missing = [m for m in interface_members() if not hasattr(kind, m)]
    assert not missing, f"{type(kind).__qualname__} lacks {missing}"
    assert isinstance(kind, TaskKind)
    assert kind.name == name
    # a task with its own params section says how to type it (saved models record their options)
    assert spec.options_section is None or spec.options_type is not None
    assert hasattr(transformers, kind.auto_model)
    for member in interface_members():  # methods keep the interface's parameters, so stages can call them
        declared = getattr(TaskKind, member, None)
        if inspect.isfunction(declared):
            named = list(inspect.signature(declared).parameters.values())[1:]
            expected = [p.name for p in named if p.kind is p.POSITIONAL_OR_KEYWORD]
            actual = list(inspect.signature(getattr(kind, member)).parameters)
            assert actual[: len(expected)] == expected, f"{name}.{member}{actual}: expected {expected}"


def test_task_modules_count_as_code_of_the_stages_that_use_the_table():
    """Stage code identity follows imports (tasks/stages.py): editing a task's module must rerun them."""
    from tasks.stages import code_files

    files = code_files("tasks.kinds")
    for module in ("image", "image_sources", "image_validate", "efficientnet_lite", "fashion_mnist"):
        assert f"tasks/kinds/{module}.py" in files


def test_an_unknown_task_type_names_the_known_ones():
    with pytest.raises(ValueError, match="image-classification"):
        load_task("audio-classification", None)


# The plan's inputs that this test does not vary: no augmentation, no activation cache.
FIXED_INPUTS = {"augmented": False, "cacheable": False}


@pytest.mark.parametrize("strategy", ["full", "head"])
def test_adversarial_training_is_refused_for_images_with_what_to_do(strategy):
    """FGM shifts word embeddings: an image model has none, so the plan refuses it before any step."""
    from tasks.config import ConfigError
    from tasks.kinds.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteForImageClassification
    from tasks.transfer import make_plan
    from tests.minilm import train_cfg

    model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=2))
    cfg = train_cfg(strategy=strategy, adversarial_eps=0.5)
    with pytest.raises(ConfigError, match=r"train\.adversarial_eps: 0\.5 is a text-embedding perturbation"):
        make_plan(cfg, model, steps_per_epoch=4, **FIXED_INPUTS)
    with pytest.raises(ConfigError, match=r"set train\.adversarial_eps: 0 \(images: image\.augment_crop"):
        make_plan(cfg, model, steps_per_epoch=4, **FIXED_INPUTS)
    plan = make_plan(cfg.model_copy(update={"adversarial_eps": 0.0}), model, 4, **FIXED_INPUTS)
    assert plan.strategy == strategy


def test_fine_tuning_the_head_on_lfw_makes_the_loss_fall(tmp_path):
    """The smoke test: 100 real face / non-face crops, the backbone fixed and cached, the head trained."""
    kind = load_task("image-classification", options(size=64))
    base = converted_model(tmp_path / "base")
    folder = lfw_folder(tmp_path / "lfw", per_class=50)
    files = sorted(folder.rglob("*.png"))
    labels = ["face", "other"]
    inputs = kind.encode(
        pd_frame(files, folder), folder, labels
    )  # the snapshot root is the folder itself here
    torch.manual_seed(0)
    model = kind.build_model(base, labels).eval()
    prep = kind.training_preprocessing(base)
    depth = len(kind.blocks(model).layers)  # everything below the head is fixed: a linear probe
    with torch.no_grad():
        features = kind.bottom(model, kind.collate(inputs, list(range(len(files))), prep), depth)
    head = model.classifier
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2)
    losses = []
    for epoch in range(15):
        for batch in kind.batches(inputs, 25, random.Random(epoch)):
            loss = torch.nn.functional.cross_entropy(
                kind.top(model, features[batch], depth), inputs.labels[batch]
            )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4]), losses


def pd_frame(files, root):
    import pandas as pd

    return pd.DataFrame(
        {"image": [f.relative_to(root).as_posix() for f in files], "label": [f.parent.name for f in files]}
    )


def test_training_augmentation_is_reproducible_per_epoch_and_absent_at_evaluation(tmp_path):
    kind = load_task("image-classification", options(size=32))
    folder = lfw_folder(tmp_path / "lfw", per_class=3)
    files = sorted(folder.rglob("*.png"))
    inputs = kind.encode(pd_frame(files, folder), folder, ["face", "other"])
    base = converted_model(tmp_path / "base")
    prep, augment = kind.training_preprocessing(base), kind.augmentation(seed=7)
    batch = list(range(len(files)))

    def pixels(**kw):
        return kind.collate(inputs, batch, prep, **kw)["pixel_values"]

    assert pixels().shape == (6, 3, 32, 32)  # grey files -> 3 channels at image.size
    torch.testing.assert_close(pixels(), pixels())
    first = pixels(augmentation=augment, epoch=1)
    torch.testing.assert_close(first, pixels(augmentation=augment, epoch=1))  # a resumed epoch: same crops
    assert not torch.allclose(first, pixels(augmentation=augment, epoch=2))
    assert not torch.allclose(first, pixels())


# -- serving requests and scoring inputs --------------------------------------------------------------------

LIMITS = ImageLimits(max_batch=4, max_image_bytes=200_000, max_pixels=1_000_000)


def test_base64_json_and_multipart_uploads_give_the_same_images():
    blobs = [png_bytes(noise(1)), png_bytes(noise(2, channels=1))]
    body = json.dumps({"images": [base64.b64encode(b).decode() for b in blobs]}).encode()
    from_json = parse_request(body, "application/json", LIMITS)
    boundary = "xYz"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + blob
        + b"\r\n"
        for i, blob in enumerate(blobs)
    )
    upload = parse_request(
        parts + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}", LIMITS
    )
    assert [im.size for im in from_json] == [im.size for im in upload] == [(40, 32), (40, 32)]
    assert all(im.mode == "RGB" for im in from_json + upload)
    assert [np.asarray(im).tolist() for im in from_json] == [np.asarray(im).tolist() for im in upload]
    data_url = "data:image/png;base64," + base64.b64encode(blobs[0]).decode()
    assert len(parse_request(json.dumps({"images": [data_url]}).encode(), "application/json", LIMITS)) == 1


def test_batch_scoring_takes_a_folder_or_a_list_of_paths(tmp_path):
    folder = lfw_folder(tmp_path / "imgs", per_class=2)
    (folder / ".DS_Store").write_bytes(b"\0")
    found = scoring_files(folder, "image")
    assert [p.relative_to(folder).as_posix() for p in found] == [
        "face/000.png",
        "face/001.png",
        "other/100.png",
        "other/101.png",
    ]
    listing = tmp_path / "list.txt"
    listing.write_text("# to score\nimgs/face/000.png\n\nimgs/other/101.png\n")
    assert scoring_files(listing, "image") == [folder / "face/000.png", folder / "other/101.png"]
    table = tmp_path / "table.csv"
    table.write_text("path,id\nimgs/face/001.png,1\n")
    assert scoring_files(table, "path") == [folder / "face/001.png"]


def test_embedding_drift_tells_faces_from_other_crops(tmp_path):
    from tasks.config import DriftConfig

    kind = load_task("image-classification", options(size=32))
    base = converted_model(tmp_path / "base")
    folder = lfw_folder(tmp_path / "lfw", per_class=40)
    frame = pd_frame(sorted(folder.rglob("*.png")), folder)
    faces, others = frame[frame["label"] == "face"], frame[frame["label"] == "other"]
    cfg = DriftConfig(
        label="warn", length="ignore", oov="ignore", embedding="block", max_label_psi=0.1, alpha=0.01,
        max_oov_increase=0.1, sample_rows=20, permutations=200, seed=0,
    )  # fmt: skip
    roots = (folder, folder)
    [moved] = kind.drift_checks(faces, others, roots, cfg, base)
    assert moved.name == "embedding" and moved.drifted and moved.p_value < 0.01
    [same] = kind.drift_checks(faces.iloc[::2], faces.iloc[1::2], roots, cfg, base)
    assert not same.drifted and same.statistic < moved.statistic
    assert kind.drift_checks(faces, others, roots, cfg, None) == []  # no encoder: nothing to embed
    vectors = kind.embed([folder / p for p in faces["image"][:3]], base)
    assert vectors.shape == (3, 1280) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_serve_max_pixels_defaults_to_the_image_section_and_bounds_requests(tmp_path):
    """`serve --max-pixels N`: images declaring more than N pixels get 413 before decoding; without the
    option the project's image.max_pixels applies."""
    import yaml

    from flows.cli import _parser
    from flows.serve_commands import serve_settings
    from tasks.config import ConfigError, config_from_dict
    from tests.conftest import ROOT

    cfg = config_from_dict(yaml.safe_load((ROOT / "params.yaml").read_text()), {"image.max_pixels": 5_000})
    default = serve_settings(_parser().parse_args(["serve"]), cfg)
    given = serve_settings(_parser().parse_args(["serve", "--max-pixels", "1000"]), cfg)
    assert (default.max_pixels, given.max_pixels) == (5_000, 1_000)
    with pytest.raises(ConfigError, match="--max-pixels must be positive"):
        serve_settings(_parser().parse_args(["serve", "--max-pixels", "0"]), cfg)

    kind = load_task("image-classification", options())  # the model's own image.max_pixels: 40,000,000
    body = json.dumps({"images": [base64.b64encode(png_bytes(noise(5, (40, 40)))).decode()]}).encode()
    assert len(kind.parse_request(body, "application/json", default)) == 1  # 1,600 pixels
    with pytest.raises(ImageRequestError) as refused:
        kind.parse_request(body, "application/json", given)
    assert refused.value.status == 413


def test_the_image_example_params_are_a_valid_image_config():
    from tasks.config import load_config
    from tests.conftest import ROOT

    cfg = load_config(ROOT / "examples" / "image-classification" / "params.yaml")
    assert cfg.task.type == "image-classification" and cfg.image.size == 64


def test_the_ner_example_params_are_a_valid_token_config():
    from tasks.config import load_config
    from tasks.kinds.token_tags import tag_names
    from tests.conftest import ROOT

    cfg = load_config(ROOT / "examples" / "token-classification" / "params.yaml")
    assert cfg.task.type == "token-classification" and cfg.data.source == "sample://wnut16"
    assert len(tag_names(cfg.data.labels)) == 21  # O, then B-/I- of the sample's ten types


def test_lora_targets_of_a_text_model_are_refused_with_the_image_models_own():
    from tasks.config import ConfigError
    from tasks.kinds.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteForImageClassification
    from tests.minilm import train_cfg

    kind = load_task("image-classification", options())
    model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=2))
    cfg = train_cfg(strategy="lora", lora_target_modules=["query", "value"])
    with pytest.raises(ConfigError, match=r"train\.lora_target_modules: \['query', 'value'\].*'conv_pw'"):
        kind.apply_lora(model, cfg)
    adapted = kind.apply_lora(model, cfg.model_copy(update={"lora_target_modules": ["conv_pw"]}))
    assert any("lora_" in name for name, _ in adapted.named_parameters())
