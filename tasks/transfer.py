"""Transfer-learning strategies: what stays frozen, what adapts, at which learning rate.

- ``head``: the encoder is fixed; only the classification head (pooler + new linear layer) learns.
- ``freeze``: embeddings (``freeze_embeddings``) and the lowest ``freeze_layers`` encoder layers are fixed.
- ``full``: everything learns; ``layer_lr_decay`` gives each lower layer a smaller learning rate.
- ``gradual``: starts as ``head``, then unfreezes one more layer from the top every epoch (or every
  ``unfreeze_every_steps`` steps) until all layers adapt.
- ``lora``: the pretrained weights are fixed; low-rank adapters on ``lora_target_modules`` and the head learn.

Fixed layers run in eval mode (no dropout), so their output for a given example never changes: with
``cache_frozen`` the trainer computes it once (the task's ``bottom``) and trains the rest from the cache
(``top``); the text encoder's split is tasks/kinds/text_forward.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasks.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger("transferline.transfer")


def encoder_layers(model: PreTrainedModel) -> tuple[Any, Any]:
    """(stem, list of layers early -> late) of a model: a BERT-like encoder's embeddings and layers, or
    the stem and stages an image architecture has (tasks/kinds/image_blocks.py names them)."""
    from tasks.kinds import image_blocks, text_forward

    if model.config.model_type in image_blocks.ARCHITECTURES:
        found = image_blocks.blocks(model)
        return found.stem, found.layers
    base = text_forward.encoder(model)
    return base.embeddings, base.encoder.layer


@dataclass(frozen=True)
class Plan:
    """Which parts adapt, as a function of the optimisation step."""

    strategy: str
    num_layers: int
    embeddings_frozen: bool
    frozen_layers: int  # lowest encoder layers fixed for the whole run (gradual: at step 0)
    unfreeze_every_steps: int  # gradual only: steps between unfreezing the next layer down
    cache_depth: int | None  # embeddings + this many lowest layers computed once; None = no cache

    def frozen_layers_at(self, step: int) -> int:
        if self.strategy != "gradual":
            return self.frozen_layers
        return max(0, self.num_layers - step // self.unfreeze_every_steps)

    def describe(self, step: int = 0) -> str:
        frozen = self.frozen_layers_at(step)
        emb = "frozen" if self.embeddings_frozen else "adapting"
        layers = " ".join(
            f"L{i}:{'frozen' if i < frozen or self.strategy == 'lora' else 'adapting'}"
            for i in range(self.num_layers)
        )
        suffix = " (+LoRA adapters)" if self.strategy == "lora" else ""
        cache = f"; layers below L{self.cache_depth} cached" if self.cache_depth is not None else ""
        return f"{self.strategy}: embeddings {emb}, {layers}, head adapting{suffix}{cache}"


def make_plan(
    cfg: TrainConfig,
    model: PreTrainedModel,
    steps_per_epoch: int,
    *,
    augmented: bool,
    cacheable: bool,
) -> Plan:
    """What adapts when; `augmented`: training inputs change every epoch (random crops), so fixed layers
    must see each epoch's inputs and nothing is cached; `cacheable`: the task can split this model's
    forward pass at a layer (``kind.cacheable``), so fixed layers may be computed once."""
    stem, layers = encoder_layers(model)
    n = len(layers)
    strategy = cfg.strategy
    if cfg.adversarial_eps and not hasattr(stem, "word_embeddings"):
        raise ConfigError(
            f"train.adversarial_eps: {cfg.adversarial_eps:g} is a text-embedding perturbation (it shifts the"
            f" word embeddings of a batch's tokens) and this model ({model.config.model_type}) reads no"
            " tokens; set train.adversarial_eps: 0 (images: image.augment_crop_scale and image.augment_flip"
            " make training robust to small input changes)"
        )
    if strategy == "freeze" and cfg.freeze_layers > n:
        raise ConfigError(f"train.freeze_layers: {cfg.freeze_layers} exceeds the model's {n} encoder layers")
    embeddings_frozen = {
        "head": True,
        "freeze": cfg.freeze_embeddings,
        "full": False,
        "gradual": cfg.freeze_embeddings,
        "lora": True,
    }[strategy]
    if cfg.adversarial_eps and embeddings_frozen:
        raise ConfigError(
            f"train.adversarial_eps: {cfg.adversarial_eps:g} shifts the word embeddings, which strategy"
            f" {strategy!r} keeps fixed; use strategy full (or freeze/gradual with freeze_embeddings: false),"
            " or set train.adversarial_eps: 0"
        )
    frozen = {"head": n, "freeze": cfg.freeze_layers, "full": 0, "gradual": n, "lora": n}[strategy]
    cache_depth = None
    wanted = cfg.cache_frozen and strategy in ("head", "freeze") and frozen > 0
    if wanted and embeddings_frozen and cacheable and not augmented:
        cache_depth = frozen
    elif wanted and augmented:
        log.info("no activation cache: training inputs are augmented, fixed layers see each epoch's crops")
    elif wanted:
        log.info("no activation cache: %s is not a cacheable architecture", model.config.model_type)
    every = cfg.unfreeze_every_steps or steps_per_epoch
    return Plan(strategy, n, embeddings_frozen, frozen, max(1, every), cache_depth)


def apply_lora(model: PreTrainedModel, cfg: TrainConfig) -> PreTrainedModel:
    """Wrap with PEFT LoRA adapters; the new head is trained in full (modules_to_save)."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as err:  # e.g. a target module name the architecture does not have
        raise ConfigError(f"train.lora_target_modules: {err}") from None


def set_trainable(model: PreTrainedModel, plan: Plan, step: int) -> None:
    """requires_grad per the plan at `step`; fixed modules go to eval mode (no dropout), others to train."""
    if plan.strategy == "lora":
        return  # PEFT has set requires_grad: adapters and head only
    embeddings, layers = encoder_layers(model)
    frozen = plan.frozen_layers_at(step)
    fixed_by_module = [(embeddings, plan.embeddings_frozen)]
    fixed_by_module += [(layer, i < frozen) for i, layer in enumerate(layers)]
    for module, fixed in fixed_by_module:
        for p in module.parameters():
            p.requires_grad = not fixed


def set_modes(model: PreTrainedModel, plan: Plan, step: int, training: bool) -> None:
    model.train(training)
    if not training or plan.strategy == "lora":
        return
    embeddings, layers = encoder_layers(model)
    frozen = plan.frozen_layers_at(step)
    if plan.embeddings_frozen:
        embeddings.eval()
    for layer in layers[:frozen]:
        layer.eval()


def param_groups(model: PreTrainedModel, plan: Plan, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: layer-wise learning-rate decay and no weight decay on biases/LayerNorm.

    The head learns at ``learning_rate``; encoder layer i (of n) at ``learning_rate * decay ** (n - i)``;
    embeddings at ``learning_rate * decay ** (n + 1)``. Parameters fixed for the whole run are left out;
    gradual unfreezing includes every layer (AdamW skips a parameter until it has a gradient).
    """
    if plan.strategy == "lora":
        params = [p for p in model.parameters() if p.requires_grad]
        return _split_decay(params, cfg.learning_rate, cfg.weight_decay, "lora+head")
    embeddings, layers = encoder_layers(model)
    n = plan.num_layers
    ever_adapting = 0 if plan.strategy == "gradual" else plan.frozen_layers
    assigned: set[int] = set()
    groups: list[dict[str, Any]] = []

    def add(module: Any, lr: float, name: str) -> None:
        params = list(module.parameters())
        assigned.update(id(p) for p in params)
        groups.extend(_split_decay(params, lr, cfg.weight_decay, name))

    if plan.embeddings_frozen:
        assigned.update(id(p) for p in embeddings.parameters())
    else:
        add(embeddings, cfg.learning_rate * cfg.layer_lr_decay ** (n + 1), "embeddings")
    for i, layer in enumerate(layers):
        if i < ever_adapting:
            assigned.update(id(p) for p in layer.parameters())
        else:
            add(layer, cfg.learning_rate * cfg.layer_lr_decay ** (n - i), f"layer{i}")
    head = [p for p in model.parameters() if id(p) not in assigned]  # pooler + classifier
    groups.extend(_split_decay(head, cfg.learning_rate, cfg.weight_decay, "head"))
    return [g for g in groups if g["params"]]


def _split_decay(params: list[Any], lr: float, weight_decay: float, name: str) -> list[dict[str, Any]]:
    # Standard BERT recipe: no weight decay on biases and LayerNorm weights (the 1-D tensors).
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}.no_decay"},
    ]


def layer_map(model: PreTrainedModel) -> dict[str, dict[str, int]]:
    """Per top-level block (embeddings, layer i, head): trainable and total parameter counts."""
    out: dict[str, dict[str, int]] = {}
    named = _layer_names(model)
    for name, p in model.named_parameters():
        parts = name.split(".")
        if named:
            block = named.get(name, "head")
        elif "layer" in parts:
            block = f"layer{parts[parts.index('layer') + 1]}"
        elif "embeddings" in parts:
            block = "embeddings"
        else:
            block = "head"
        entry = out.setdefault(block, {"trainable": 0, "total": 0})
        entry["total"] += p.numel()
        entry["trainable"] += p.numel() if p.requires_grad else 0
    return out


def _layer_names(model: PreTrainedModel) -> dict[str, str]:
    """Parameter name -> block of an image architecture's stem and layers; {} for BERT-like encoders,
    whose parameter names say their block."""
    from tasks.kinds import image_blocks

    if model.config.model_type not in image_blocks.ARCHITECTURES:
        return {}
    stem, layers = encoder_layers(model)
    ids = {id(p): "embeddings" for p in stem.parameters()}
    ids.update({id(p): f"layer{i}" for i, layer in enumerate(layers) for p in layer.parameters()})
    return {n: ids[id(p)] for n, p in model.named_parameters() if id(p) in ids}
