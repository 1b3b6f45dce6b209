"""Where an image model's stem, layers (early -> late) and head are: what the transfer strategies act on.

The strategies of tasks/transfer.py see every model as a stem, a list of layers and a head (every parameter
in neither): ``head`` trains the head, ``freeze`` fixes the stem and the lowest layers, ``full`` gives layer
i a learning rate decayed by its distance from the top, ``gradual`` unfreezes layers from the top, ``lora``
puts adapters on the named projections. Per architecture (``config.model_type``), this module says where
those parts are. Only EfficientNet-Lite (tasks/kinds/efficientnet_lite.py) has a ``bottom``/``top`` split,
so only its fixed lower layers can be computed once and cached; the others train through their own forward
pass with the fixed part frozen.

LoRA targets are the pointwise projections: 1×1 convolutions for convolutional networks (PEFT's LoRA wraps
``nn.Conv2d``: a rank-r conv with the base kernel, then a 1×1 conv back to the output channels; depthwise
convolutions are left alone, they hold few parameters), the attention projections for ViT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.kinds.base import Blocks

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# model_type -> (stem, layer list), as attribute paths under the base model (model.<base_model_prefix>).
BLOCK_PATHS: dict[str, tuple[str, str]] = {
    "vit": ("embeddings", "layers"),
    "convnext": ("embeddings", "encoder.stages"),
    "resnet": ("embedder", "encoder.stages"),
    "efficientnet": ("embeddings", "encoder.blocks"),
}
# model_type -> module names LoRA adapts (PEFT matches them as name suffixes).
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "efficientnet_lite": ("conv_pw", "conv_pwl", "conv_head"),
    "vit": ("q_proj", "v_proj"),
    "convnext": ("pwconv1", "pwconv2"),
}
CACHEABLE = ("efficientnet_lite",)
ARCHITECTURES = (*BLOCK_PATHS, "efficientnet_lite")  # the image model types with a known layout
HEAD_MODULES = ("classifier",)  # trained in full under LoRA (PEFT's modules_to_save)


def _base(model: PreTrainedModel) -> Any:
    peft_base = getattr(model, "get_base_model", None)  # a PEFT wrapper: look inside it
    model = peft_base() if callable(peft_base) else model
    return getattr(model, model.base_model_prefix)


def _path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def blocks(model: PreTrainedModel) -> Blocks:
    """The stem and layers of `model`; ValueError for an architecture this module does not map."""
    model_type = model.config.model_type
    base = _base(model)
    if model_type == "efficientnet_lite":
        return Blocks(base.stem_modules(), base.layer_modules())
    if model_type not in BLOCK_PATHS:
        known = ", ".join(sorted([*BLOCK_PATHS, "efficientnet_lite"]))
        raise ValueError(
            f"image model type {model_type!r} has no known layer layout (known: {known}); use train.strategy"
            " full or head, which need none, or add its layout to tasks/kinds/image_blocks.py"
        )
    stem_path, layers_path = BLOCK_PATHS[model_type]
    return Blocks(_path(base, stem_path), list(_path(base, layers_path)))


def cacheable(model: PreTrainedModel) -> bool:
    """True when fixed lower layers can be computed once (the model has ``bottom``/``top``)."""
    return model.config.model_type in CACHEABLE


def lora_targets(model: PreTrainedModel) -> tuple[str, ...]:
    """The default LoRA target module names of `model`'s architecture."""
    model_type = model.config.model_type
    if model_type not in LORA_TARGETS:
        raise ValueError(f"no default LoRA targets for image model type {model_type!r}; name them in params")
    return LORA_TARGETS[model_type]


def apply_lora(model: PreTrainedModel, rank: int, alpha: float, dropout: float, targets: list[str]) -> Any:
    """`model` with LoRA adapters on `targets` (Linear or Conv2d); the classifier is trained in full."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        modules_to_save=list(HEAD_MODULES),  # no PEFT task type for images: name the head
    )
    return get_peft_model(model, config)
