"""EfficientNet-Lite as a transformers model: the offline default backbone of image classification.

EfficientNet-Lite (Tan & Le; the TF-Lite variants) is EfficientNet without squeeze-and-excitation, with ReLU6
instead of swish and an unscaled stem and head, so it quantises and runs well on a CPU. transformers has
EfficientNet but not the Lite variants, and timm is not importable beside this project's CPU torch, so the
architecture is defined here, small, as a ``PreTrainedModel`` + ``PreTrainedConfig`` pair. Module names are
timm's ``tf_efficientnet_lite0`` names (``conv_stem``, ``bn1``, ``blocks.S.B.conv_pw`` …, ``conv_head``,
``bn2``, ``classifier``); the backbone sits under the base-model prefix ``efficientnet_lite``.

The weights were trained in TensorFlow, whose "same" padding pads a stride-2 convolution asymmetrically
(more on the bottom/right when the total is odd); PyTorch's symmetric padding would shift every stride-2
window by one pixel. ``SameConv2d`` reproduces TF's rule, so the converted weights see what they were
trained on (tests/unit/test_image_backbone.py checks ImageNet predictions on photos).

For transfer learning the model is a stem, ``num_layers`` layers and a head: the seven block stages, then
the 1×1 ``conv_head`` with global average pooling as the last layer (its output is the pooled feature vector),
then dropout and the linear classifier. ``bottom(x, depth)`` runs the stem and the lowest ``depth`` layers,
``top(h, depth)`` the rest, so fixed lower layers can be computed once and cached; ``top(bottom(x, d), d)``
is the forward pass for every d. Call ``register()`` before loading a saved folder with the Auto classes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)

MODEL_TYPE = "efficientnet_lite"


class EfficientNetLiteConfig(PreTrainedConfig):
    """EfficientNet-Lite0 by default: 7 stages of inverted-residual blocks, 224×224 inputs in [-1, 1].

    Per stage: how many blocks, their depthwise kernel, the first block's stride, the expansion ratio and
    the output channels (the lists are stage-aligned).
    """

    model_type = MODEL_TYPE

    num_channels: int = 3
    image_size: int = 224
    stem_channels: int = 32
    block_repeats: list[int] | tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
    kernel_sizes: list[int] | tuple[int, ...] = (3, 3, 5, 3, 5, 5, 3)
    strides: list[int] | tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)
    expand_ratios: list[int] | tuple[int, ...] = (1, 6, 6, 6, 6, 6, 6)
    out_channels: list[int] | tuple[int, ...] = (16, 24, 40, 80, 112, 192, 320)
    hidden_size: int = 1280  # channels of conv_head: the pooled feature vector the classifier reads
    batch_norm_eps: float = 1e-3  # TensorFlow's default, which the pretrained statistics were computed with
    dropout_rate: float = 0.2  # before the classifier
    initializer_range: float = 0.02


class SameConv2d(nn.Conv2d):
    """A convolution padded like TensorFlow's ``padding="same"``: output size ceil(input / stride), the
    odd leftover of the total padding on the bottom/right. For stride 1 and odd kernels this equals
    symmetric padding, so only strided convolutions pad in ``forward``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1):
        symmetric = (kernel_size - 1) // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, symmetric, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        left, right = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        top, bottom = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of one spatial dimension under TensorFlow's "same" rule."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class DepthwiseSeparable(nn.Module):
    """The first stage's block (expansion 1): depthwise conv, then a 1×1 projection; no activation after
    the projection (a linear bottleneck), residual when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, eps: float):
        super().__init__()
        self.conv_dw = SameConv2d(cin, cin, kernel, stride, groups=cin)
        self.bn1 = nn.BatchNorm2d(cin, eps=eps)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=eps)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.bn1(self.conv_dw(x)))
        h = self.bn2(self.conv_pw(h))
        return x + h if self.residual else h


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expansion, depthwise conv, 1×1 linear projection (no squeeze-excite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, eps: float):
        super().__init__()
        mid = cin * expand
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid, eps=eps)
        self.conv_dw = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid, eps=eps)
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=eps)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.bn1(self.conv_pw(x)))
        h = F.relu6(self.bn2(self.conv_dw(h)))
        h = self.bn3(self.conv_pwl(h))
        return x + h if self.residual else h


def _stage(config: EfficientNetLiteConfig, index: int, cin: int) -> nn.Sequential:
    """Stage `index`: its first block takes `cin` channels and the stage's stride, the others stride 1."""
    cout, kernel = config.out_channels[index], config.kernel_sizes[index]
    expand, eps = config.expand_ratios[index], config.batch_norm_eps
    blocks: list[nn.Module] = []
    for b in range(config.block_repeats[index]):
        stride = config.strides[index] if b == 0 else 1
        block_in = cin if b == 0 else cout
        if expand == 1:
            blocks.append(DepthwiseSeparable(block_in, cout, kernel, stride, eps))
        else:
            blocks.append(InvertedResidual(block_in, cout, kernel, stride, expand, eps))
    return nn.Sequential(*blocks)


class EfficientNetLitePreTrainedModel(PreTrainedModel):
    config: EfficientNetLiteConfig
    config_class = EfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Random initialisation (the from-scratch baseline, a new head): He-normal convolutions as in
        timm's EfficientNet, unit BatchNorm, a small normal classifier."""
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.bias)


class EfficientNetLiteModel(EfficientNetLitePreTrainedModel):
    """The backbone: stem, 7 block stages, 1×1 conv_head; pooled output (B, hidden_size)."""

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        eps = config.batch_norm_eps
        self.conv_stem = SameConv2d(config.num_channels, config.stem_channels, 3, 2)
        self.bn1 = nn.BatchNorm2d(config.stem_channels, eps=eps)
        stages, cin = [], config.stem_channels
        for index in range(len(config.block_repeats)):
            stages.append(_stage(config, index, cin))
            cin = config.out_channels[index]
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(cin, config.hidden_size, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(config.hidden_size, eps=eps)
        self.post_init()

    @property
    def num_layers(self) -> int:
        """The block stages plus the pooled conv_head."""
        return len(self.blocks) + 1

    def stem_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv_stem, self.bn1])

    def layer_modules(self) -> list[nn.Module]:
        """The layers early -> late, as modules (for freezing and learning-rate groups): each stage, then
        conv_head with its BatchNorm."""
        return [*self.blocks, nn.ModuleList([self.conv_head, self.bn2])]

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The stem: (B, 3, H, W) -> (B, 32, H/2, W/2)."""
        return F.relu6(self.bn1(self.conv_stem(pixel_values)))

    def head_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """conv_head's feature map: (B, 320, h, w) -> (B, hidden_size, h, w)."""
        return F.relu6(self.bn2(self.conv_head(hidden)))

    def layer(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Layer `index` on the previous layer's output; the last returns pooled features (B, hidden_size)."""
        if index < len(self.blocks):
            return self.blocks[index](hidden)
        return self.head_features(hidden).mean((2, 3))

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None, **kwargs: Any
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple[torch.Tensor, torch.Tensor]:
        features = self.head_features(self.blocks(self.embed(pixel_values)))
        pooled = features.mean((2, 3))
        if return_dict is False:
            return features, pooled
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=features, pooler_output=pooled)


class EfficientNetLiteForImageClassification(EfficientNetLitePreTrainedModel):
    """The backbone, dropout and a linear classifier over the pooled features."""

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.efficientnet_lite = EfficientNetLiteModel(config)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def bottom(self, pixel_values: torch.Tensor, depth: int) -> torch.Tensor:
        """The stem and the lowest `depth` layers: what a cache of fixed layers stores."""
        base = self.efficientnet_lite
        hidden = base.embed(pixel_values)
        for index in range(depth):
            hidden = base.layer(index, hidden)
        return hidden

    def top(self, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        """Logits (B, num_labels) from the output of layer `depth` (the layers above it and the head)."""
        base = self.efficientnet_lite
        for index in range(depth, base.num_layers):
            hidden = base.layer(index, hidden)
        return self.classifier(self.dropout(hidden))

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutputWithNoAttention | tuple[torch.Tensor, ...]:
        logits = self.top(self.bottom(pixel_values, 0), 0)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits)


def register() -> None:
    """Make the Auto classes know ``efficientnet_lite`` (in this process only; idempotent).

    Explicit rather than at import: registering mutates transformers' global tables. Loading never needs
    trust_remote_code: the architecture is this module, reviewed with the project, not code from a model.
    """
    AutoConfig.register(MODEL_TYPE, EfficientNetLiteConfig, exist_ok=True)
    AutoModel.register(EfficientNetLiteConfig, EfficientNetLiteModel, exist_ok=True)
    AutoModelForImageClassification.register(
        EfficientNetLiteConfig, EfficientNetLiteForImageClassification, exist_ok=True
    )
