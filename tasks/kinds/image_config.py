"""The ``image`` section of params.yaml, typed: what only image classification reads.

Like every section (tasks/config.py) it has no defaults of its own: params.yaml sets every key, with its
comment. The generic keys keep their places (``data.label_column``, ``data.labels``, ``validate.*`` rows
per class, duplicate rate and label-share tolerance, ``train.*``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ImageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str = Field(min_length=1)  # the image column of a table or Hub dataset source
    size: int | None = Field(ge=16, le=1024)  # model input side in pixels; null: the model's own
    augment_crop_scale: float = Field(gt=0, le=1)  # smallest area share of a random crop; 1: no crop
    augment_flip: bool  # mirror half the training images left-right
    formats: list[str] = Field(min_length=1)  # Pillow format names accepted, e.g. PNG, JPEG
    modes: list[str] = Field(min_length=1)  # Pillow modes accepted, e.g. L, RGB, RGBA, P
    min_side: int = Field(ge=1)
    max_side: int = Field(ge=1)
    max_pixels: int = Field(ge=1)  # larger files are refused before decoding (decompression bombs)
    reference_size_tolerance: float = Field(gt=0)  # relative change of width/height quantiles vs champion
    reference_brightness_tolerance: float = Field(gt=0, le=1)  # absolute change of brightness quantiles

    @model_validator(mode="after")
    def _check(self) -> ImageConfig:
        if self.max_side < self.min_side:
            raise ValueError("max_side must be >= min_side")
        return self
