"""train stage: adapt the pretrained encoder to the task with a fresh classification head.

A plain torch loop rather than transformers' Trainer: batches are grouped by length and padded per
batch (reviews average ~27 tokens, so padding to a fixed length would waste most of the compute), bf16
autocast is used where the hardware has it, fixed lower layers are computed once and cached, checkpoints
survive a kill, and the best epoch on the validation split is what is kept. What adapts is the strategy's
choice (tasks/transfer.py): the head only, the upper layers, everything with layer-wise learning rates,
gradual unfreezing, or LoRA adapters.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from prefect import task

from tasks import caching
from tasks.config import Config, ConfigError, TrainConfig, load_config
from tasks.download import BaseModelRef, load_base_ref
from tasks.paths import SPLITS, ProjectPaths
from tasks.prepare import LABEL, TEXT, file_sha256
from tasks.runtime import configure_environment, stage_logging, torch_threads
from tasks.stages import params_digest

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("transferline.train")

METADATA_FILE = "transferline.json"
ADAPTER_DIR = "adapter"  # lora: PEFT adapter files inside the model folder
# Batch of the inference passes inside training (validation, the frozen-layer cache): 32 ran as fast as
# 128 here, with less peak memory.
INFERENCE_BATCH = 32


class TrainingDiverged(RuntimeError):
    """The loss stopped being a number: the run is stopped before anything is saved."""


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    val_accuracy: float
    seconds: float
    samples_per_s: float


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    device: str
    precision: str
    trainable_params: int  # parameters that learn at some point of the run (gradual: by its end)
    total_params: int
    best_epoch: int
    best_val_accuracy: float
    seconds: float
    strategy: str
    steps: int
    cached_layers: int  # lowest encoder layers served from the activation cache (0 = no cache)
    resumed_from_step: int | None
    stopped_early: bool
    layers: dict[str, dict[str, int]]  # block -> trainable/total params
    history: list[EpochStats]

    def metrics(self) -> dict[str, float]:
        return {
            "best_val_accuracy": self.best_val_accuracy,
            "train_seconds": self.seconds,
            "trainable_params": float(self.trainable_params),
            "train_steps": float(self.steps),
            "train_samples_per_s": self.history[-1].samples_per_s if self.history else 0.0,
        }


@dataclass
class _Progress:
    """Where the loop is: everything a checkpoint must restore besides tensors."""

    epoch: int = 1
    step_in_epoch: int = 0  # batches done in the current epoch
    global_step: int = 0
    epoch_rng: list[Any] | None = None  # python RNG state that draws this epoch's batch order
    seen: int = 0
    loss_sum: float = 0.0
    epoch_seconds: float = 0.0  # time spent in the current epoch before a restart
    best_acc: float = -1.0
    best_epoch: int = 0
    stale_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


# -- hardware ------------------------------------------------------------------------------------------


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX); else autocast is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_device(preference: str) -> torch.device:
    import torch

    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available (use auto or cpu)")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def choose_precision(preference: str, device: torch.device) -> str:
    import torch

    if preference == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA device (use bf16 or auto on a CPU)")
    if preference != "auto":
        return preference
    if device.type == "cuda":  # older GPUs without bf16 get fp16 with loss scaling
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> Any:
    import torch

    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision in ("bf16", "fp16"))


def cast_for_inference(model: PreTrainedModel, precision: str) -> None:
    """Store an inference-only model in its inference dtype once, instead of autocast casting per call.

    bf16: the whole model, so LayerNorm, residual sums and attention run in bf16 too. Measured on this CPU
    (2,000 reviews, batch 32): 11% more texts/s than bf16 Linear layers under autocast, and 3 of 1,912 test
    labels differ from autocast's, where fp32 differs from autocast on 4 (same accuracy to 1 row).
    Evaluation, serving and batch scoring all load models through here, so the gate scores what is
    served. fp16 (CUDA only): Linear layers only, as autocast would round them; LayerNorm, embeddings
    and softmax keep fp32, since fp16's range is too narrow for them.
    """
    import torch

    if precision == "bf16":
        model.to(torch.bfloat16)
    elif precision == "fp16":
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(torch.float16)


# -- model ---------------------------------------------------------------------------------------------


def build_model(base: Path, labels: list[str], pretrained: bool = True) -> PreTrainedModel:
    """The pretrained encoder with a freshly initialised head for `labels` (label2id saved in its config).

    pretrained=False gives the same architecture with every weight randomly initialised: the baseline
    that shows what the pretrained weights are worth.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "classifier MISSING" load report is expected: it is the new head
    hf_logging.disable_progress_bar()
    label_maps = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    if not pretrained:
        return AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(base, **label_maps))
    return AutoModelForSequenceClassification.from_pretrained(base, **label_maps, use_safetensors=True)


# -- batching ------------------------------------------------------------------------------------------


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of similar-length examples, in random order: little padding, still shuffled each epoch.

    Examples are shuffled, cut into windows of 50 batches, sorted by length inside a window, then the
    batches are shuffled; so batch composition changes every epoch while padding stays small.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence of the batch: (input_ids, attention_mask), each (B, T)."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar-length examples (shortest first): little padding for inference passes."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def predict_logits(
    model: PreTrainedModel,
    encoded: list[list[int]],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    precision: str,
) -> torch.Tensor:
    """Logits (N, C) in input order; batches are formed by length for speed and re-ordered after."""
    import torch

    from tasks import transfer

    model.eval()
    out = torch.empty((len(encoded), model.config.num_labels), dtype=torch.float32)
    with torch.inference_mode(), autocast(device, precision):
        for idx in by_length([len(s) for s in encoded], batch_size):
            ids, mask = collate([encoded[i] for i in idx], pad_id)
            out[idx] = transfer.logits(model, ids.to(device), mask.to(device)).float().cpu()
    return out


# -- the loop ------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> Any:
    import torch

    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:  # linear warm-up, then linear decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def task_loss(logits: torch.Tensor, target: torch.Tensor, rdrop_alpha: float = 0.0) -> torch.Tensor:
    """Cross-entropy of `logits` (B, C) against `target` (B,).

    With `rdrop_alpha` > 0 the logits are (2B, C): the batch run twice under independent dropout masks.
    The loss is then R-Drop's (Liang et al., 2021): the mean cross-entropy of both halves plus alpha times
    the symmetric KL divergence between their predicted distributions. Asking the sub-networks that dropout
    samples to agree regularises fine-tuning on small data; inference is unchanged (no dropout).
    """
    import torch.nn.functional as F

    if not rdrop_alpha:
        return F.cross_entropy(logits, target)
    first, second = logits.chunk(2)
    p, q = F.log_softmax(first, -1), F.log_softmax(second, -1)
    kl = F.kl_div(p, q, log_target=True, reduction="batchmean") + F.kl_div(
        q, p, log_target=True, reduction="batchmean"
    )
    return (F.cross_entropy(first, target) + F.cross_entropy(second, target)) / 2 + rdrop_alpha * kl / 2


@contextlib.contextmanager
def adversarial_embeddings(model: PreTrainedModel, ids: torch.Tensor, eps: float) -> Iterator[None]:
    """Inside: the word embeddings of the tokens in `ids` moved by `eps` along their loss gradient.

    FGM adversarial training (Miyato et al., 2017): after the clean backward pass, the rows of the
    word-embedding table this batch uses are shifted by eps * g / ||g|| (g: their gradient, the direction
    that raises the loss most), the batch is run once more and its loss backpropagated too, so each step
    also fits the worst nearby input. The rows are restored exactly on exit, before the optimiser step.
    Nothing happens when the table has no gradient (embeddings fixed) or it is 0 or not finite.
    """
    import torch

    from tasks import transfer

    table = transfer.backbone(model).embeddings.word_embeddings.weight
    rows = ids.unique()
    grad = None if table.grad is None else table.grad[rows]
    norm = None if grad is None else grad.float().norm()
    if norm is None or not bool(torch.isfinite(norm)) or norm == 0:
        yield
        return
    saved = table.detach()[rows].clone()
    with torch.no_grad():
        table[rows] += (eps * grad.float() / norm).to(table.dtype)
    try:
        yield
    finally:
        with torch.no_grad():
            table[rows] = saved


def fine_tune(
    base: Path,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    labels: list[str],
    cfg: TrainConfig,
    progress: bool | None = None,
    checkpoint_dir: Path | None = None,
    pretrained: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, TrainResult]:
    """Adapt `base` to the task with `cfg.strategy`; keep the epoch with the best validation accuracy.

    Args:
        base: a Hugging Face model folder (config.json + model.safetensors + tokenizer).
        train, validation: frames with `text` and `label` columns; labels must be in `labels`.
        labels: class names in class-id order.
        cfg: the `train` section of params.yaml.
        progress: show a progress bar (default: when stderr is a terminal).
        checkpoint_dir: where to write checkpoints and resume from the newest intact one (None = neither).
        pretrained: False trains the same architecture from random initialisation (the baseline).
    Returns:
        (model with the best weights loaded — a PEFT model for `lora` —, tokenizer, TrainResult with
        model_dir unset).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from tasks import checkpoints, transfer

    started = time.perf_counter()
    torch.set_num_threads(cfg.num_threads or torch_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    seed_everything(cfg.seed)
    rank, world = init_distributed(cfg.device)
    device = choose_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    precision = choose_precision(cfg.precision, device)

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = build_model(base, labels, pretrained)
    label_id = {label: i for i, label in enumerate(labels)}
    x_train = encode(tokenizer, train[TEXT].tolist(), cfg.max_length)
    y_train = torch.tensor([label_id[v] for v in train[LABEL]], dtype=torch.long)
    x_val = encode(tokenizer, validation[TEXT].tolist(), cfg.max_length)
    y_val = torch.tensor([label_id[v] for v in validation[LABEL]], dtype=torch.long)
    pad_id = tokenizer.pad_token_id or 0
    lengths = [len(s) for s in x_train]
    # Under torchrun each of `world` processes takes every world-th batch: the same number of steps each.
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size) // world or 1

    plan = transfer.make_plan(cfg, model, steps_per_epoch)
    if cfg.strategy == "lora":
        model = transfer.apply_lora(model, cfg)
    transfer.set_trainable(model, plan, 0)
    model.to(device)
    # fused: one kernel for all parameters; the default on CPU loops over them in Python every step.
    optimizer = torch.optim.AdamW(transfer.param_groups(model, plan, cfg), lr=cfg.learning_rate, fused=True)
    scheduler = _schedule(optimizer, steps_per_epoch * cfg.epochs, cfg.warmup_ratio)
    names = {id(p): n for n, p in model.named_parameters()}
    adapting = {names[id(p)]: p for group in optimizer.param_groups for p in group["params"]}
    trainable = sum(p.numel() for p in adapting.values())
    total = sum(p.numel() for p in model.parameters())
    layers = transfer.layer_map(model)
    log.info(
        "fine-tuning on %s (%s): %d train / %d validation rows, %s of %s parameters adapt\n  %s",
        device, precision, len(train), len(validation), f"{trainable:,}", f"{total:,}", plan.describe(),
    )  # fmt: skip

    depth = plan.cache_depth
    cache_train = cache_val = None
    if depth is not None:
        t0 = time.perf_counter()
        cache_train = _frozen_activations(model, x_train, pad_id, depth, device, precision)
        cache_val = _frozen_activations(model, x_val, pad_id, depth, device, precision)
        log.info("cached the output of the %d fixed layer(s) in %.1f s", depth, time.perf_counter() - t0)

    def val_accuracy() -> float:
        if cache_val is not None:
            logits = _logits_from_cache(model, cache_val, depth or 0, INFERENCE_BATCH, device, precision)
        else:
            logits = predict_logits(model, x_val, pad_id, INFERENCE_BATCH, device, precision)
        return float((logits.argmax(-1) == y_val).float().mean())

    state = _Progress(epoch_rng=_rng_state(random.Random(cfg.seed)))
    best_state: dict[str, torch.Tensor] | None = None
    resumed_from = None
    if checkpoint_dir is not None:
        ckpt = checkpoints.latest(checkpoint_dir)
        if ckpt is not None and set(ckpt.tensors.get("weights", {})) == set(adapting):
            state, best_state = _restore(ckpt, adapting, optimizer, scheduler)
            resumed_from = ckpt.step
            log.info("resumed from checkpoint %s (step %d, epoch %d)", ckpt.path.name, ckpt.step, state.epoch)
        elif ckpt is not None:
            log.warning("ignoring checkpoint %s: it holds other parameters than this run trains", ckpt.path)

    def save_checkpoint() -> None:
        if checkpoint_dir is None or rank != 0:
            return
        tensors = {"weights": dict(adapting), "optimizer": {}, "rng": {"torch": torch.get_rng_state()}}
        opt = optimizer.state_dict()
        for index, param_state in opt["state"].items():
            for key, value in param_state.items():
                tensors["optimizer"][f"{index}.{key}"] = value
        if best_state is not None:
            tensors["best"] = best_state
        meta = {
            "progress": asdict(state),
            "optimizer_groups": opt["param_groups"],
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        }
        checkpoints.write(checkpoint_dir, state.global_step, tensors, meta)

    rng = random.Random(cfg.seed)
    show = (sys.stderr.isatty() if progress is None else progress) and rank == 0
    log_every = max(1, steps_per_epoch // 4)
    clip = list(adapting.values())
    # fp16 gradients underflow without loss scaling; for bf16/fp32 the scaler is a pass-through.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    frozen_now = -1
    # R-Drop runs each batch twice in one pass (rows [x; x]): the two halves see different dropout masks.
    passes = 2 if cfg.rdrop_alpha else 1
    while state.epoch <= cfg.epochs and not state.stopped_early:
        rng.setstate(_rng_tuple(state.epoch_rng))
        batches = length_grouped_batches(lengths, cfg.batch_size, rng)
        if world > 1:
            batches = batches[rank::world][:steps_per_epoch]
        transfer.set_modes(model, plan, state.global_step, training=True)
        t0 = time.perf_counter() - state.epoch_seconds
        bar = tqdm(
            total=len(batches), initial=state.step_in_epoch, desc=f"epoch {state.epoch}/{cfg.epochs}",
            unit="batch", disable=not show, dynamic_ncols=True,
        )  # fmt: skip
        while state.step_in_epoch < len(batches):
            if plan.frozen_layers_at(state.global_step) != frozen_now:  # gradual unfreezing
                frozen_now = plan.frozen_layers_at(state.global_step)
                transfer.set_trainable(model, plan, state.global_step)
                transfer.set_modes(model, plan, state.global_step, training=True)
                if plan.strategy == "gradual":
                    log.info("step %d: %s", state.global_step, plan.describe(state.global_step))
            batch = batches[state.step_in_epoch]
            target = y_train[batch].to(device)
            if cache_train is not None:
                hidden, mask = _collate_hidden([cache_train[i] for i in batch])
                hidden, mask = hidden.repeat(passes, 1, 1).to(device), mask.repeat(passes, 1).to(device)
                forward = functools.partial(transfer.top, model, hidden, mask, depth or 0)
            else:
                ids, mask = collate([x_train[i] for i in batch], pad_id)
                ids, mask = ids.repeat(passes, 1).to(device), mask.repeat(passes, 1).to(device)
                forward = functools.partial(transfer.logits, model, ids, mask)
            with autocast(device, precision):
                logits = forward()
            loss = task_loss(logits.float(), target, cfg.rdrop_alpha)
            scaler.scale(loss).backward()
            if cfg.adversarial_eps:  # refused where the embeddings are fixed, so never on the cached path
                with adversarial_embeddings(model, ids, cfg.adversarial_eps), autocast(device, precision):
                    adversarial = task_loss(forward().float(), target, cfg.rdrop_alpha)
                scaler.scale(adversarial).backward()
            if world > 1:
                _average_gradients(clip, world)
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(clip, 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step_in_epoch += 1
            state.global_step += 1
            state.seen += len(batch)
            value = loss.item()
            if not math.isfinite(value):  # every later step would only spread the NaN into the weights
                raise TrainingDiverged(
                    f"training loss became {value} at epoch {state.epoch},"
                    f" step {state.step_in_epoch + 1}: lower train.learning_rate (now {cfg.learning_rate:g})"
                    " or set train.precision: fp32;"
                    " nothing was saved or registered"
                )
            state.loss_sum += value * len(batch)
            rate = state.seen / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{state.loss_sum / state.seen:.4f}", rate=f"{rate:.0f}/s", refresh=False)
            # Without a bar (CI logs, Prefect workers), a line each quarter epoch shows the run is alive.
            if not show and state.step_in_epoch % log_every == 0 and state.step_in_epoch < len(batches):
                log.info(
                    "epoch %d/%d: %d/%d batches, loss %.4f, %.0f samples/s",
                    state.epoch, cfg.epochs, state.step_in_epoch, len(batches),
                    state.loss_sum / state.seen, rate,
                )  # fmt: skip
            every = cfg.checkpoint_every_steps
            if every and state.global_step % every == 0 and state.step_in_epoch < len(batches):
                state.epoch_seconds = time.perf_counter() - t0
                save_checkpoint()
        bar.close()
        seconds = time.perf_counter() - t0
        val_acc = val_accuracy()
        mean_loss = state.loss_sum / max(state.seen, 1)
        stats = EpochStats(state.epoch, mean_loss, val_acc, seconds, state.seen / seconds)
        state.history.append(asdict(stats))
        log.info(
            "epoch %d/%d: loss %.4f, validation accuracy %.4f, %.0f samples/s",
            state.epoch, cfg.epochs, stats.train_loss, val_acc, stats.samples_per_s,
        )  # fmt: skip
        if val_acc > state.best_acc:
            state.best_acc, state.best_epoch, state.stale_epochs = val_acc, state.epoch, 0
            best_state = {n: p.detach().clone() for n, p in adapting.items()}
        else:
            state.stale_epochs += 1
            if cfg.early_stopping_patience and state.stale_epochs >= cfg.early_stopping_patience:
                state.stopped_early = True
                log.info("early stop: no better validation accuracy for %d epoch(s)", state.stale_epochs)
        state.epoch += 1
        state.step_in_epoch, state.seen, state.loss_sum, state.epoch_seconds = 0, 0, 0.0, 0.0
        state.epoch_rng = _rng_state(rng)
        if state.epoch <= cfg.epochs and not state.stopped_early:
            save_checkpoint()
    if best_state is not None and state.best_epoch != len(state.history):
        with torch.no_grad():
            for name, value in best_state.items():
                adapting[name].copy_(value)
        log.info("keeping epoch %d (best validation accuracy %.4f)", state.best_epoch, state.best_acc)
    result = TrainResult(
        model_dir=Path(),
        device=str(device),
        precision=precision,
        trainable_params=trainable,
        total_params=total,
        best_epoch=state.best_epoch,
        best_val_accuracy=state.best_acc,
        seconds=time.perf_counter() - started,
        strategy=cfg.strategy,
        steps=state.global_step,
        cached_layers=depth or 0,
        resumed_from_step=resumed_from,
        stopped_early=state.stopped_early,
        layers=layers,
        history=[EpochStats(**h) for h in state.history],
    )
    return model, tokenizer, result


def init_distributed(device_preference: str) -> tuple[int, int]:
    """(rank, world size): under `torchrun` / `accelerate launch` (WORLD_SIZE > 1) join the process group.

    nccl on GPUs, gloo on CPUs, so the same code path runs (and is tested) on a CPU-only machine.
    """
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        cuda = device_preference != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank()
    if rank == 0:
        log.info("data parallel over %d processes (effective batch = %d x batch_size)", world, world)
    return rank, world


def _average_gradients(params: list[Any], world: int) -> None:
    """All-reduce the gradients: every process then takes the same optimiser step on the same weights.

    Explicit rather than DistributedDataParallel's hooks so it also covers the cached path (which calls
    submodules directly), gradual unfreezing and LoRA without special cases.
    """
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_tuple(state: list[Any] | None) -> tuple[Any, ...]:
    assert state is not None
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _restore(
    ckpt: Any, adapting: dict[str, torch.Tensor], optimizer: Any, scheduler: Any
) -> tuple[_Progress, dict[str, torch.Tensor] | None]:
    import torch

    with torch.no_grad():
        for name, value in ckpt.tensors["weights"].items():
            adapting[name].copy_(value)
    opt_state: dict[str, Any] = {"state": {}, "param_groups": ckpt.state["optimizer_groups"]}
    for key, value in ckpt.tensors["optimizer"].items():
        index, name = key.split(".", 1)
        opt_state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict({**ckpt.state["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    torch.set_rng_state(ckpt.tensors["rng"]["torch"])
    return _Progress(**ckpt.state["progress"]), ckpt.tensors.get("best")


def _frozen_activations(
    model: PreTrainedModel, encoded: list[list[int]], pad_id: int, depth: int, device: Any, precision: str
) -> list[torch.Tensor]:
    """Per example, the hidden states after the fixed lowest `depth` layers (unpadded, float32, on CPU)."""
    import torch

    from tasks.transfer import bottom

    model.eval()
    out: list[torch.Tensor] = [torch.empty(0)] * len(encoded)
    with torch.no_grad(), autocast(device, precision):
        for idx in by_length([len(s) for s in encoded], INFERENCE_BATCH):
            ids, mask = collate([encoded[i] for i in idx], pad_id)
            hidden = bottom(model, ids.to(device), mask.to(device), depth).float().cpu()
            for row, i in enumerate(idx):
                out[i] = hidden[row, : len(encoded[i])].clone()
    return out


def _collate_hidden(hidden: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    import torch
    from torch.nn.utils.rnn import pad_sequence

    lengths = torch.tensor([h.shape[0] for h in hidden])
    padded = pad_sequence(hidden, batch_first=True)
    mask = (torch.arange(padded.shape[1])[None, :] < lengths[:, None]).long()
    return padded, mask


def _logits_from_cache(
    model: PreTrainedModel,
    cache: list[torch.Tensor],
    depth: int,
    batch_size: int,
    device: Any,
    precision: str,
) -> torch.Tensor:
    import torch

    from tasks.transfer import top

    model.eval()
    out = torch.empty((len(cache), model.config.num_labels), dtype=torch.float32)
    with torch.inference_mode(), autocast(device, precision):
        for idx in by_length([h.shape[0] for h in cache], batch_size):
            hidden, mask = _collate_hidden([cache[i] for i in idx])
            out[idx] = top(model, hidden.to(device), mask.to(device), depth).float().cpu()
    return out


# -- stage shell ---------------------------------------------------------------------------------------


def data_sha256(paths: ProjectPaths) -> str:
    """Identity of the prepared snapshot: sha256 over the split files' sha256 hashes."""
    lines = "".join(f"{split} {file_sha256(paths.split_file(split))}\n" for split in SPLITS)
    return hashlib.sha256(lines.encode()).hexdigest()


def read_split(paths: ProjectPaths, split: str) -> pd.DataFrame:
    path = paths.split_file(split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the prepare stage first")
    return pd.read_parquet(path)


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path, metadata: dict[str, Any]
) -> None:
    """Weights (safetensors only), tokenizer, label maps in config.json, and transferline.json lineage."""
    import shutil

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if hasattr(model, "merge_and_unload"):  # PEFT: the adapters alone, and a merged copy for serving
        model.save_pretrained(out_dir / ADAPTER_DIR)
        model = model.merge_and_unload()
    model.save_pretrained(out_dir)  # transformers 5 always writes model.safetensors
    tokenizer.save_pretrained(out_dir)
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def run_identity(paths: ProjectPaths, cfg: Config, base: BaseModelRef) -> str:
    """What a training run depends on: the checkpoints of one identity are only resumed by the same run.

    The params are those the train stage declares (tasks/stages.py); the data and the base model by content.
    """
    key = f"{params_digest(cfg, 'train')} {data_sha256(paths)} {base.sha256}"
    return hashlib.sha256(key.encode()).hexdigest()


def run_train(paths: ProjectPaths, cfg: Config, base: BaseModelRef | None = None) -> TrainResult:
    from tasks import checkpoints

    base = base or load_base_ref(paths)
    train, validation = read_split(paths, "train"), read_split(paths, "validation")
    identity = run_identity(paths, cfg, base)
    checkpoint_dir = paths.checkpoints_dir / identity[:16]
    model, tokenizer, result = fine_tune(
        base.path, train, validation, cfg.data.labels, cfg.train, checkpoint_dir=checkpoint_dir
    )
    metadata = {
        "labels": cfg.data.labels,
        "label2id": {label: i for i, label in enumerate(cfg.data.labels)},
        "max_length": cfg.train.max_length,
        "params_sha256": params_digest(cfg, "train"),
        "data_sha256": data_sha256(paths),
        "base_model": base.manifest(),
        "training": {k: v for k, v in asdict(result).items() if k not in ("model_dir", "history")},
        "history": [asdict(h) for h in result.history],
    }
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process holds the same weights
        save_model(model, tokenizer, paths.challenger_dir, metadata)
        checkpoints.clear(checkpoint_dir)  # the model is saved: nothing left to resume
    return replace(result, model_dir=paths.challenger_dir)


@task(name="fine-tune", cache_policy=caching.TRAIN)
def train_task(paths: ProjectPaths, cfg: Config, base: BaseModelRef) -> TrainResult:
    return run_train(paths, cfg, base)


def main() -> None:
    """DVC stage entry point: ``python -m tasks.train`` from the project root."""
    configure_environment()
    stage_logging()
    paths = ProjectPaths.at(".")
    try:
        result = run_train(paths, load_config(paths.params))
    except ConfigError as err:
        print(f"train: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"train: best epoch {result.best_epoch}, validation accuracy {result.best_val_accuracy:.4f}")


if __name__ == "__main__":
    main()
