"""Images -> the tensors a backbone reads: resize, crop, normalise; random crop and flip for training only.

A model folder describes its own input in ``preprocessor_config.json``, in the keys transformers' image
processors use (so ``AutoImageProcessor`` loads the folders transferline writes, and transferline reads the
folders of ViT, ConvNeXt, ResNet or EfficientNet from the Hub). Two rules cover them:

* ``warp``: resize straight to ``size`` = {height, width} (ViT, EfficientNet);
* ``crop``: resize the shorter side to ``resize_edge`` (aspect kept), then centre-crop height × width
  (ConvNeXt/ResNet's ``crop_pct``, CLIP/BiT's ``crop_size``), the classic ImageNet evaluation transform.

The resizing is Pillow's on 8-bit pixels, exactly as transformers' PIL backend does it, so the tensors match
``AutoImageProcessor``'s (tests/unit/test_image_preprocess.py). Augmentation replaces the deterministic
resize/crop of training images only: a random crop of ``crop_scale``–100 % of the area (aspect 3:4–4:3)
resized to the model's input, and a horizontal flip with probability ½. Each example draws from its own
generator seeded by (seed, epoch, example), so a resumed run sees exactly the crops it would have seen.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image as PILImage

PROCESSOR_FILE = "preprocessor_config.json"
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC
_ASPECT_RANGE = (3 / 4, 4 / 3)
_CROP_TRIES = 10  # draws of a random crop before falling back to the centre crop (torchvision's rule)


@dataclass(frozen=True)
class Preprocessing:
    """One model's input transform, as its preprocessor_config.json describes it."""

    height: int
    width: int
    resize_edge: int | None  # crop rule: the shorter side is resized to this first; None: warp rule
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: int  # a PIL resampling filter
    rescale_factor: float = 1 / 255

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> Preprocessing:
        """Read transformers' keys: size (height/width or shortest_edge), crop_pct, crop_size, resample,
        rescale_factor, image_mean, image_std."""
        size = data.get("size") or {}
        if isinstance(size, int):
            size = {"height": size, "width": size}
        common = {
            "mean": tuple(float(v) for v in data.get("image_mean", (0.5, 0.5, 0.5))),
            "std": tuple(float(v) for v in data.get("image_std", (0.5, 0.5, 0.5))),
            "resample": int(data.get("resample", 2)),
            "rescale_factor": float(data.get("rescale_factor", 1 / 255)),
        }
        if "height" in size and "width" in size and not data.get("do_center_crop"):
            return cls(int(size["height"]), int(size["width"]), None, **common)
        if "shortest_edge" not in size:
            raise ValueError(f"{PROCESSOR_FILE}: unsupported size {size!r}")
        edge = int(size["shortest_edge"])
        crop = data.get("crop_size")
        if data.get("do_center_crop") and isinstance(crop, dict):
            return cls(int(crop["height"]), int(crop["width"]), edge, **common)
        if "crop_pct" in data and edge < 384:  # transformers' ConvNeXt rule: larger sizes are warped
            return cls(edge, edge, int(edge / float(data["crop_pct"])), **common)
        return cls(edge, edge, None, **common)

    @classmethod
    def from_folder(cls, folder: Path) -> Preprocessing:
        path = Path(folder) / PROCESSOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the model folder does not describe its image input")
        return cls.from_config(json.loads(path.read_text()))

    def to_config(self) -> dict[str, Any]:
        """transformers' keys for this transform (a ViT processor for warp, a BiT processor for crop)."""
        common = {
            "do_resize": True,
            "resample": self.resample,
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }
        if self.resize_edge is None:
            size = {"height": self.height, "width": self.width}
            return {"image_processor_type": "ViTImageProcessor", "size": size, **common}
        return {
            "image_processor_type": "BitImageProcessor",
            "size": {"shortest_edge": self.resize_edge},
            "do_center_crop": True,
            "crop_size": {"height": self.height, "width": self.width},
            **common,
        }

    def save(self, folder: Path) -> None:
        text = json.dumps(self.to_config(), indent=2, sort_keys=True) + "\n"
        (Path(folder) / PROCESSOR_FILE).write_text(text)

    def with_size(self, size: int) -> Preprocessing:
        """The same transform for square inputs of `size` pixels (a crop rule keeps its crop share)."""
        if self.resize_edge is None:
            return replace(self, height=size, width=size)
        share = self.height / self.resize_edge
        return replace(self, height=size, width=size, resize_edge=round(size / share))

    # -- one image --------------------------------------------------------------------------------------
    def resize(self, image: PILImage.Image) -> PILImage.Image:
        """The deterministic resize (and centre crop) of evaluation and serving."""
        if self.resize_edge is None:
            return image.resize((self.width, self.height), self.resample)
        short, long = sorted(image.size)
        scaled = (self.resize_edge, int(self.resize_edge * long / short))
        width, height = scaled if image.width <= image.height else scaled[::-1]
        image = image.resize((width, height), self.resample)
        top, left = (height - self.height) // 2, (width - self.width) // 2
        return image.crop((left, top, left + self.width, top + self.height))

    def augment(
        self, image: PILImage.Image, augmentation: Augmentation, rng: random.Random
    ) -> PILImage.Image:
        """A random crop of the image resized to the model's input, maybe mirrored (training only)."""
        from PIL import Image

        if augmentation.crop_scale < 1.0:
            box = random_crop_box(image.width, image.height, augmentation.crop_scale, rng)
            image = image.resize((self.width, self.height), self.resample, box=box)
        else:
            image = self.resize(image)
        if augmentation.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def to_tensor(self, image: PILImage.Image) -> torch.Tensor:
        """(3, H, W) float32: rescaled to [0, 1], then normalised per channel."""
        import numpy as np
        import torch

        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (pixels.float() * self.rescale_factor - mean) / std


@dataclass(frozen=True)
class Augmentation:
    """Training-only augmentation: ``crop_scale`` is the smallest area share a random crop keeps (1.0: no
    random crop); ``flip`` mirrors half the images left-right."""

    crop_scale: float
    flip: bool
    seed: int

    @property
    def active(self) -> bool:
        return self.crop_scale < 1.0 or self.flip

    def rng(self, epoch: int, example: int) -> random.Random:
        """The generator of one example in one epoch: the same draws on a resumed run."""
        return random.Random(f"{self.seed}:{epoch}:{example}")


def random_crop_box(
    width: int, height: int, min_scale: float, rng: random.Random
) -> tuple[float, float, float, float]:
    """A (left, top, right, bottom) box inside the image covering min_scale–1 of its area, aspect 3:4–4:3;
    the centred largest box of that aspect range when no draw fits."""
    area = width * height
    log_low, log_high = math.log(_ASPECT_RANGE[0]), math.log(_ASPECT_RANGE[1])
    for _ in range(_CROP_TRIES):
        target = area * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(log_low, log_high))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if w <= width and h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return left, top, left + w, top + h
    aspect = min(max(width / height, _ASPECT_RANGE[0]), _ASPECT_RANGE[1])
    w, h = (width, width / aspect) if width / height < aspect else (height * aspect, height)
    left, top = (width - w) / 2, (height - h) / 2
    return left, top, left + w, top + h


def collate(
    images: list[PILImage.Image],
    preprocessing: Preprocessing,
    augmentation: Augmentation | None = None,
    rngs: list[random.Random] | None = None,
) -> torch.Tensor:
    """A batch (B, 3, H, W) of RGB images; augmented when `augmentation` (with one generator per image) is
    given, else the evaluation transform."""
    import torch

    if augmentation is not None and augmentation.active:
        if rngs is None or len(rngs) != len(images):
            raise ValueError("augmentation needs one random generator per image")
        sized = [preprocessing.augment(im, augmentation, rng) for im, rng in zip(images, rngs, strict=True)]
    else:
        sized = [preprocessing.resize(im) for im in images]
    return torch.stack([preprocessing.to_tensor(im) for im in sized])
