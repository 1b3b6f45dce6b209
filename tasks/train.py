"""train stage: adapt the pretrained encoder to the task with a fresh classification head.

A plain torch loop rather than transformers' Trainer: batches are grouped by length and padded per
batch (short texts vary in length, so padding to a fixed length would waste most of the compute), bf16
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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from prefect import task

from tasks import caching, checkpoints, search, transfer
from tasks.config import AUTO, STRATEGIES, Config, ConfigError, TrainConfig, load_config
from tasks.download import BaseModelRef, load_base_ref
from tasks.inference import (
    INFERENCE_BATCH,
    METADATA_FILE,
    assemble,
    autocast,
    by_length,
    choose_device,
    choose_precision,
    predict_inputs,
)
from tasks.kinds import load_task, task_of, text_forward
from tasks.kinds.base import IGNORE_INDEX, class_names
from tasks.paths import ProjectPaths
from tasks.prepare import data_sha256, read_split
from tasks.runtime import configure_environment, stage_logging, torch_threads
from tasks.stages import params_digest

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from tasks.kinds.base import TaskKind

log = logging.getLogger("transferline.train")

ADAPTER_DIR = "adapter"  # lora: PEFT adapter files inside the model folder


class TrainingDiverged(RuntimeError):
    """The loss stopped being a number: the run is stopped before anything is saved."""


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    val_accuracy: float
    seconds: float
    samples_per_s: float
    val_loss: float = math.nan  # mean cross-entropy on validation (nan in records written without it)


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
    # strategy `auto`: the search that chose `strategy` (search.SearchResult.to_dict); None otherwise
    search: dict[str, Any] | None = None

    def metrics(self) -> dict[str, float]:
        out = {
            "best_val_accuracy": self.best_val_accuracy,
            "train_seconds": self.seconds,
            "trainable_params": float(self.trainable_params),
            "train_steps": float(self.steps),
            "train_samples_per_s": self.history[-1].samples_per_s if self.history else 0.0,
        }
        if self.search is not None:
            out["search_trials"] = float(len(self.search["strategy_search"]))
            out["search_seconds"] = float(self.search["seconds"])
        return out


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


@dataclass
class _Run:
    """One fine-tuning run as `_set_up` builds it: what every step reads, and the objects steps advance."""

    cfg: TrainConfig
    rank: int  # this process, of `world` (1 without torchrun)
    world: int
    device: torch.device
    precision: str
    kind: TaskKind  # what the examples are (tasks/kinds): how they are batched, collated and cached
    processor: Any  # the kind's input transform (a tokenizer, an image resize/normalise)
    augmentation: Any  # training-only augmentation of the kind, or None
    model: PreTrainedModel
    plan: transfer.Plan
    x_train: Any  # the kind's encoded examples (``.labels``: (N,) class ids)
    y_train: torch.Tensor  # (N,) class ids
    x_val: Any
    y_val: torch.Tensor
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    adapting: dict[str, torch.Tensor]  # name -> parameter, every one the optimiser holds
    # What training changes, by name: the adapting parameters and the BatchNorm running statistics, which
    # move with them; the best epoch and checkpoints keep all of it (a text model has no BatchNorm).
    kept: dict[str, torch.Tensor]
    trainable: int  # parameters that learn at some point of the run
    total: int
    layers: dict[str, dict[str, int]]  # block -> trainable/total params, as set up
    cache_train: list[torch.Tensor] | None  # per example, the output of the fixed layers (None: no cache)
    cache_val: list[torch.Tensor] | None
    checkpoint_dir: Path | None
    show: bool  # draw a progress bar
    rng: random.Random  # draws each epoch's batch order; reset from _Progress.epoch_rng every epoch
    # Changed by the loop: the best epoch's weights (None until an epoch improves), and the fixed layer
    # count the trainable flags were last set for (-1: not yet), so gradual unfreezing acts on a change.
    best: dict[str, torch.Tensor] | None = None
    frozen_layers: int = -1


# -- model ---------------------------------------------------------------------------------------------


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
    """Cross-entropy of `logits` (B, C) against `target` (B,); per-position logits (B, T, C) against
    targets (B, T') are scored on the positions whose target is not IGNORE_INDEX (`scored_positions`).

    With `rdrop_alpha` > 0 the logits are (2B, C): the batch run twice under independent dropout masks.
    The loss is then R-Drop's (Liang et al., 2021): the mean cross-entropy of both halves plus alpha times
    the symmetric KL divergence between their predicted distributions. Asking the sub-networks that dropout
    samples to agree regularises fine-tuning on small data; inference is unchanged (no dropout).
    """
    import torch.nn.functional as F

    if logits.dim() > 2:
        logits, target = scored_positions(logits, target, 2 if rdrop_alpha else 1)
    if not rdrop_alpha:
        return F.cross_entropy(logits, target)
    first, second = logits.chunk(2)
    p, q = F.log_softmax(first, -1), F.log_softmax(second, -1)
    kl = F.kl_div(p, q, log_target=True, reduction="batchmean") + F.kl_div(
        q, p, log_target=True, reduction="batchmean"
    )
    return (F.cross_entropy(first, target) + F.cross_entropy(second, target)) / 2 + rdrop_alpha * kl / 2


def scored_positions(
    logits: torch.Tensor, target: torch.Tensor, passes: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position logits (passes·B, T, C) and targets (B, T') -> (passes·N, C) and (N,) over the N
    positions whose target is not IGNORE_INDEX (a word's later sub-tokens, special tokens, padding). T' may
    exceed T: targets are padded to the longest example of the split, a batch only to its own longest."""
    import torch

    target = target[:, : logits.shape[1]]
    keep = target.reshape(-1) != IGNORE_INDEX
    rows = [part.reshape(-1, part.shape[-1])[keep] for part in logits.chunk(passes)]
    return torch.cat(rows), target.reshape(-1)[keep]


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

    table = text_forward.encoder(model).embeddings.word_embeddings.weight
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
    activations: FrozenActivations | None = None,
    kind: TaskKind | None = None,
    snapshot: Path | None = None,
) -> tuple[PreTrainedModel, Any, TrainResult]:
    """Adapt `base` to the task with `cfg.strategy`; keep the epoch with the best validation accuracy.

    Args:
        base: a Hugging Face model folder (config.json + model.safetensors + tokenizer).
        train, validation: frames with `text` and `label` columns; labels must be in `labels`.
        labels: class names in class-id order.
        cfg: the `train` section of params.yaml.
        progress: show a progress bar (default: when stderr is a terminal).
        checkpoint_dir: where to write checkpoints and resume from the newest intact one (None = neither).
        pretrained: False trains the same architecture from random initialisation (the baseline).
        activations: outputs of fixed layers kept from earlier runs on the same base model (the strategy
            search's trials); the ones missing are computed and added. None: computed for this run only.
        kind: the task (tasks/kinds); default text classification.
        snapshot: the prepared folder the frames' file paths are relative to (tasks that keep files).
    Returns:
        (model with the best weights loaded — a PEFT model for `lora` —, the input processor (text: the
        tokenizer), TrainResult with model_dir unset).
    """
    import torch

    if cfg.strategy not in STRATEGIES:  # `auto` names no strategy: run_train resolves it first
        raise ConfigError(f"train.strategy: {cfg.strategy!r} is not one of {', '.join(STRATEGIES)}")
    started = time.perf_counter()
    torch.set_num_threads(cfg.num_threads or torch_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    seed_everything(cfg.seed)
    show = sys.stderr.isatty() if progress is None else progress
    kind = kind or load_task("text-classification", None)
    data = (train, validation, snapshot or Path())
    run = _set_up(base, data, labels, cfg, checkpoint_dir, show, pretrained, activations, kind)
    state, resumed_from = _resume(run)
    while state.epoch <= cfg.epochs and not state.stopped_early:
        seconds = _train_epoch(run, state)
        _close_epoch(run, state, seconds)
        if state.epoch <= cfg.epochs and not state.stopped_early:
            _save_checkpoint(run, state)
    _keep_best(run, state)
    return run.model, run.processor, _result(run, state, time.perf_counter() - started, resumed_from)


# -- set-up --------------------------------------------------------------------------------------------


def _set_up(
    base: Path,
    data: tuple[pd.DataFrame, pd.DataFrame, Path],
    labels: list[str],
    cfg: TrainConfig,
    checkpoint_dir: Path | None,
    show: bool,
    pretrained: bool,
    activations: FrozenActivations | None,
    kind: TaskKind,
) -> _Run:
    """Device, precision, processor, model, encoded data (`data`: train and validation frames, and the
    snapshot folder their files are in), plan, optimiser and the frozen-layer cache."""
    import torch

    train, validation, snapshot = data
    rank, world, device, precision = _placement(cfg)
    processor = kind.processor(base, cfg.max_length, training=True)
    model = kind.build_model(base, labels, pretrained)
    x_train = kind.encode(train, snapshot, labels, processor)
    x_val = kind.encode(validation, snapshot, labels, processor)
    augmentation = kind.augmentation(cfg.seed)
    # Under torchrun each of `world` processes takes every world-th batch: the same number of steps each.
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size) // world or 1

    plan = transfer.make_plan(
        cfg, model, steps_per_epoch, augmented=augmentation is not None, cacheable=kind.cacheable(model)
    )
    if cfg.strategy == "lora":
        model = kind.apply_lora(model, cfg)
    transfer.set_trainable(model, plan, 0)
    model.to(device)
    optimizer, scheduler, adapting = _optimiser(model, plan, cfg, steps_per_epoch)
    trainable = sum(p.numel() for p in adapting.values())
    total = sum(p.numel() for p in model.parameters())
    layers = transfer.layer_map(model)
    log.info(
        "fine-tuning on %s (%s): %d train / %d validation rows, %s of %s parameters adapt\n  %s",
        device, precision, len(train), len(validation), f"{trainable:,}", f"{total:,}", plan.describe(),
    )  # fmt: skip
    cache_train = cache_val = None
    if plan.cache_depth is not None:
        splits = [x_train, x_val]
        where = (kind, processor, device, precision)
        cache_train, cache_val = _cache_frozen(model, splits, where, plan.cache_depth, activations)
    return _Run(
        cfg=cfg,
        rank=rank,
        world=world,
        device=device,
        precision=precision,
        kind=kind,
        processor=processor,
        augmentation=augmentation,
        model=model,
        plan=plan,
        x_train=x_train,
        y_train=x_train.labels,
        x_val=x_val,
        y_val=x_val.labels,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        scheduler=scheduler,
        # fp16 gradients underflow without loss scaling; for bf16/fp32 the scaler is a pass-through.
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        adapting=adapting,
        kept={**adapting, **running_statistics(model)},
        trainable=trainable,
        total=total,
        layers=layers,
        cache_train=cache_train,
        cache_val=cache_val,
        checkpoint_dir=checkpoint_dir,
        show=show and rank == 0,
        rng=random.Random(cfg.seed),
    )


def _optimiser(
    model: PreTrainedModel, plan: transfer.Plan, cfg: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, Any, dict[str, torch.Tensor]]:
    """(AdamW over the plan's parameter groups, its learning-rate schedule, the parameters it updates by
    name)."""
    import torch

    # fused: one kernel for all parameters; the default on CPU loops over them in Python every step.
    optimizer = torch.optim.AdamW(transfer.param_groups(model, plan, cfg), lr=cfg.learning_rate, fused=True)
    scheduler = _schedule(optimizer, steps_per_epoch * cfg.epochs, cfg.warmup_ratio)
    names = {id(p): n for n, p in model.named_parameters()}
    adapting = {names[id(p)]: p for group in optimizer.param_groups for p in group["params"]}
    return optimizer, scheduler, adapting


def _placement(cfg: TrainConfig) -> tuple[int, int, torch.device, str]:
    """(rank, world size, device, precision) of this process."""
    import torch

    rank, world = init_distributed(cfg.device)
    device = choose_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return rank, world, device, choose_precision(cfg.precision, device)


def _cache_frozen(
    model: PreTrainedModel,
    splits: list[Any],
    where: tuple[TaskKind, Any, Any, str],
    depth: int,
    kept: FrozenActivations | None = None,
) -> list[list[torch.Tensor]]:
    """Per split, per example, the output of the `depth` fixed layers (see _frozen_activations);
    `where`: (kind, processor, device, precision)."""
    started = time.perf_counter()
    if kept is not None:
        out = [kept.lookup(model, encoded, where, depth) for encoded in splits]
    else:
        out = [_frozen_activations(model, encoded, where, depth) for encoded in splits]
    log.info("cached the output of the %d fixed layer(s) in %.1f s", depth, time.perf_counter() - started)
    return out


def _resume(run: _Run) -> tuple[_Progress, int | None]:
    """(where the loop starts, the step resumed from): the newest intact checkpoint of this run, if any."""
    fresh = _Progress(epoch_rng=_rng_state(random.Random(run.cfg.seed)))
    if run.checkpoint_dir is None:
        return fresh, None
    ckpt = checkpoints.latest(run.checkpoint_dir)
    if ckpt is None:
        return fresh, None
    if set(ckpt.tensors.get("weights", {})) != set(run.kept):
        log.warning("ignoring checkpoint %s: it holds other parameters than this run trains", ckpt.path)
        return fresh, None
    progress, run.best = checkpoints.restore_training(ckpt, run.kept, run.optimizer, run.scheduler)
    state = _Progress(**progress)
    log.info("resumed from checkpoint %s (step %d, epoch %d)", ckpt.path.name, ckpt.step, state.epoch)
    return state, ckpt.step


# -- one epoch -----------------------------------------------------------------------------------------


def _train_epoch(run: _Run, state: _Progress) -> float:
    """The epoch's optimisation steps, from `state.step_in_epoch` on; returns the epoch's seconds."""
    from tqdm.auto import tqdm

    cfg = run.cfg
    run.rng.setstate(_rng_tuple(state.epoch_rng))
    batches = run.kind.batches(run.x_train, cfg.batch_size, run.rng)
    if run.world > 1:
        batches = batches[run.rank :: run.world][: run.steps_per_epoch]
    transfer.set_modes(run.model, run.plan, state.global_step, training=True)
    t0 = time.perf_counter() - state.epoch_seconds
    bar = tqdm(
        total=len(batches), initial=state.step_in_epoch, desc=f"epoch {state.epoch}/{cfg.epochs}",
        unit="batch", disable=not run.show, dynamic_ncols=True,
    )  # fmt: skip
    while state.step_in_epoch < len(batches):
        _follow_unfreezing(run, state.global_step)
        batch = batches[state.step_in_epoch]
        value = _step(run, batch, state.epoch)
        state.step_in_epoch += 1
        state.global_step += 1
        state.seen += len(batch)
        if not math.isfinite(value):  # every later step would only spread the NaN into the weights
            raise TrainingDiverged(
                f"training loss became {value} at epoch {state.epoch},"
                f" step {state.step_in_epoch + 1}: lower train.learning_rate (now {cfg.learning_rate:g})"
                " or set train.precision: fp32;"
                " nothing was saved or registered"
            )
        state.loss_sum += value * len(batch)
        _report_step(run, state, bar, time.perf_counter() - t0, len(batches))
        every = cfg.checkpoint_every_steps
        if every and state.global_step % every == 0 and state.step_in_epoch < len(batches):
            state.epoch_seconds = time.perf_counter() - t0
            _save_checkpoint(run, state)
    bar.close()
    if run.world > 1:  # before validation and rank 0's save, so every process holds the same model
        average_batch_norm(run.model, run.world)
    return time.perf_counter() - t0


def _follow_unfreezing(run: _Run, step: int) -> None:
    """Set the trainable flags and dropout modes when the plan fixes another number of layers at `step`."""
    if run.plan.frozen_layers_at(step) == run.frozen_layers:
        return
    run.frozen_layers = run.plan.frozen_layers_at(step)
    transfer.set_trainable(run.model, run.plan, step)
    transfer.set_modes(run.model, run.plan, step, training=True)
    if run.plan.strategy == "gradual":
        log.info("step %d: %s", step, run.plan.describe(step))


def _step(run: _Run, batch: list[int], epoch: int = 1) -> float:
    """One optimisation step on the examples `batch`; returns the batch's loss (before the step)."""
    import torch

    cfg, device = run.cfg, run.device
    target = run.y_train[batch].to(device)
    forward, ids = _forward(run, batch, epoch)
    with autocast(device, run.precision):
        logits = forward()
    loss = task_loss(logits.float(), target, cfg.rdrop_alpha)
    run.scaler.scale(loss).backward()
    if cfg.adversarial_eps:  # refused where the embeddings are fixed, so never on the cached path
        with adversarial_embeddings(run.model, ids, cfg.adversarial_eps), autocast(device, run.precision):
            adversarial = task_loss(forward().float(), target, cfg.rdrop_alpha)
        run.scaler.scale(adversarial).backward()
    clip = list(run.adapting.values())
    if run.world > 1:
        _average_gradients(clip, run.world)
    run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
    torch.nn.utils.clip_grad_norm_(clip, 1.0)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _forward(
    run: _Run, batch: list[int], epoch: int
) -> tuple[Callable[[], torch.Tensor], torch.Tensor | None]:
    """The batch's forward pass, as a call (FGM runs it twice), and its token ids (None: from the cache,
    or inputs without tokens). Training augmentation (the kind's) applies here and nowhere else.

    R-Drop runs each batch twice in one pass (rows [x; x]): the two halves see different dropout masks.
    """
    passes = 2 if run.cfg.rdrop_alpha else 1
    kind, device = run.kind, run.device
    if run.cache_train is not None:
        hidden = kind.hidden_to(kind.stack_hidden([run.cache_train[i] for i in batch] * passes), device)
        return functools.partial(kind.top, run.model, hidden, run.plan.cache_depth or 0), None
    inputs = kind.collate(run.x_train, batch, run.processor, run.augmentation, epoch)
    inputs = {k: v.repeat(passes, *[1] * (v.dim() - 1)).to(device) for k, v in inputs.items()}
    return functools.partial(kind.logits, run.model, inputs), inputs.get("input_ids")


def _report_step(run: _Run, state: _Progress, bar: Any, seconds: float, batches: int) -> None:
    """The progress bar's loss and rate; without a bar (CI logs, Prefect workers), a line each quarter
    epoch shows the run is alive."""
    rate = state.seen / max(seconds, 1e-9)
    bar.update(1)
    bar.set_postfix(loss=f"{state.loss_sum / state.seen:.4f}", rate=f"{rate:.0f}/s", refresh=False)
    log_every = max(1, run.steps_per_epoch // 4)
    if not run.show and state.step_in_epoch % log_every == 0 and state.step_in_epoch < batches:
        log.info(
            "epoch %d/%d: %d/%d batches, loss %.4f, %.0f samples/s",
            state.epoch, run.cfg.epochs, state.step_in_epoch, batches, state.loss_sum / state.seen, rate,
        )  # fmt: skip


# -- validation, the best epoch, checkpoints -----------------------------------------------------------


def _close_epoch(run: _Run, state: _Progress, seconds: float) -> None:
    """Score the epoch on validation, keep its weights when best, stop early if due; start the next."""
    cfg = run.cfg
    val_acc, val_loss = _validate(run)
    mean_loss = state.loss_sum / max(state.seen, 1)
    stats = EpochStats(state.epoch, mean_loss, val_acc, seconds, state.seen / seconds, val_loss)
    state.history.append(asdict(stats))
    log.info(
        "epoch %d/%d: loss %.4f, validation %s %.4f (loss %.4f), %.0f samples/s", state.epoch, cfg.epochs,
        stats.train_loss, run.kind.validation_metric, val_acc, val_loss, stats.samples_per_s,
    )  # fmt: skip
    if val_acc > state.best_acc:
        state.best_acc, state.best_epoch, state.stale_epochs = val_acc, state.epoch, 0
        run.best = {n: p.detach().clone() for n, p in run.kept.items()}
    else:
        state.stale_epochs += 1
        if cfg.early_stopping_patience and state.stale_epochs >= cfg.early_stopping_patience:
            state.stopped_early = True
            metric = run.kind.validation_metric
            log.info("early stop: no better validation %s for %d epoch(s)", metric, state.stale_epochs)
    state.epoch += 1
    state.step_in_epoch, state.seen, state.loss_sum, state.epoch_seconds = 0, 0, 0.0, 0.0
    state.epoch_rng = _rng_state(run.rng)


def _validate(run: _Run) -> tuple[float, float]:
    """(the task's validation score, the mean validation cross-entropy)."""
    if run.cache_val is not None:
        depth = run.plan.cache_depth or 0
        where = (run.kind, run.processor, run.device, run.precision)
        logits = _logits_from_cache(run.model, run.cache_val, depth, INFERENCE_BATCH, where)
    else:
        where = (run.kind, run.processor, run.device, run.precision)
        logits = predict_inputs(run.model, run.x_val, INFERENCE_BATCH, where)
    score = run.kind.validation_score(logits, run.y_val, class_names(run.model.config))
    return score, validation_loss(logits, run.y_val)


def validation_loss(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cross-entropy of the targets: one per example for a classifier ((n, classes) logits), one per
    labelled token for a tagger ((n, tokens, classes), padding and continuation sub-tokens ignored). It
    tells apart models that a score does not: two that both still predict the majority class have learned
    unequally."""
    import torch.nn.functional as F

    if logits.dim() == 3:  # a tagger's targets are padded to the split's longest sentence
        targets = targets[:, : logits.shape[1]]
    flat = logits.reshape(-1, logits.shape[-1]).float()
    return float(F.cross_entropy(flat, targets.reshape(-1).to(flat.device), ignore_index=IGNORE_INDEX))


def _save_checkpoint(run: _Run, state: _Progress) -> None:
    if run.checkpoint_dir is None or run.rank != 0:
        return
    checkpoints.save_training(
        run.checkpoint_dir,
        state.global_step,
        run.kept,
        run.optimizer,
        run.scheduler,
        asdict(state),
        run.best,
    )


def _keep_best(run: _Run, state: _Progress) -> None:
    """Load the best epoch's weights back when a later epoch was worse."""
    import torch

    if run.best is None or state.best_epoch == len(state.history):
        return
    with torch.no_grad():
        for name, value in run.best.items():
            run.kept[name].copy_(value)
    metric = run.kind.validation_metric
    log.info("keeping epoch %d (best validation %s %.4f)", state.best_epoch, metric, state.best_acc)


def _result(run: _Run, state: _Progress, seconds: float, resumed_from: int | None) -> TrainResult:
    return TrainResult(
        model_dir=Path(),
        device=str(run.device),
        precision=run.precision,
        trainable_params=run.trainable,
        total_params=run.total,
        best_epoch=state.best_epoch,
        best_val_accuracy=state.best_acc,
        seconds=seconds,
        strategy=run.cfg.strategy,
        steps=state.global_step,
        cached_layers=run.plan.cache_depth or 0,
        resumed_from_step=resumed_from,
        stopped_early=state.stopped_early,
        layers=run.layers,
        history=[EpochStats(**h) for h in state.history],
    )


# -- data parallel and RNG state ----------------------------------------------------------------------


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


def running_statistics(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The running mean and variance of every BatchNorm layer that tracks them, by name (the live
    buffers): state that training changes besides the parameters."""
    import torch

    stats: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            stats[f"{name}.running_mean"] = module.running_mean
            stats[f"{name}.running_var"] = module.running_var
    return stats


def average_batch_norm(model: torch.nn.Module, world: int) -> int:
    """All-reduce the running mean and variance of the BatchNorm layers that trained this epoch; returns
    how many layers were averaged.

    Gradients are averaged every step, so the weights agree across processes, but each process's running
    statistics only saw its own share of the batches. Averaging them (rather than broadcasting rank 0's)
    makes the statistics rank 0 saves an estimate over the whole epoch's data, not over a 1/world sample;
    the mean of the per-process running variances leaves out the spread of the per-process means, which is
    small next to the variance itself for shards drawn from one shuffle. Layers in eval mode (fixed by the
    strategy) did not move and are left alone; ``num_batches_tracked`` is the same on every process.
    """
    import torch
    import torch.distributed as dist

    averaged = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or not module.training:
            continue
        if module.running_mean is None:  # track_running_stats=False: batch statistics only
            continue
        for buffer in (module.running_mean, module.running_var):
            dist.all_reduce(buffer)
            buffer /= world
        averaged += 1
    return averaged


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_tuple(state: list[Any] | None) -> tuple[Any, ...]:
    assert state is not None
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _frozen_activations(
    model: PreTrainedModel, encoded: Any, where: tuple[TaskKind, Any, Any, str], depth: int
) -> list[torch.Tensor]:
    """Per example of `encoded` (the kind's inputs), the output of the stem and the fixed lowest `depth`
    layers, as the kind keeps it (text: unpadded hidden states), float32 on the CPU."""
    import torch

    kind, processor, device, precision = where
    model.eval()
    out: list[torch.Tensor] = [torch.empty(0)] * len(encoded)
    with torch.no_grad(), autocast(device, precision):
        for idx in by_length(encoded.sizes, INFERENCE_BATCH):
            inputs = {k: v.to(device) for k, v in kind.collate(encoded, idx, processor).items()}
            for i, row in zip(idx, kind.split_hidden(kind.bottom(model, inputs, depth)), strict=True):
                out[i] = row
    return out


class FrozenActivations:
    """Outputs of fixed lowest layers kept across training runs, by (layers, example key) of an example.

    Layers that stay fixed give the same output for the same input in every run on one base model at one
    precision, whatever else the runs change: the trials of a strategy search share them. One instance
    must therefore only serve runs of one base model, max length (or image size) and precision.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple[int, Any], torch.Tensor] = {}
        self.computed = 0  # examples run through the fixed layers
        self.reused = 0  # examples served from what earlier runs computed
        self.seconds = 0.0  # spent running examples through the fixed layers

    def lookup(
        self, model: PreTrainedModel, encoded: Any, where: tuple[TaskKind, Any, Any, str], depth: int
    ) -> list[torch.Tensor]:
        """Per example, the output of the lowest `depth` layers; computes only the missing."""
        kind = where[0]
        keys = [(depth, kind.example_key(encoded, i)) for i in range(len(encoded))]
        first = {}
        for i, key in enumerate(keys):
            if key not in self._kept:
                first.setdefault(key, i)
        subset = encoded.subset(list(first.values()))
        started = time.perf_counter()
        fresh = _frozen_activations(model, subset, where, depth) if first else []
        self.seconds += time.perf_counter() - started
        self._kept.update(zip(first, fresh, strict=True))
        self.computed += len(first)
        self.reused += len(keys) - len(first)
        return [self._kept[k] for k in keys]


def _logits_from_cache(
    model: PreTrainedModel,
    cache: list[torch.Tensor],
    depth: int,
    batch_size: int,
    where: tuple[TaskKind, Any, Any, str],
) -> torch.Tensor:
    import torch

    kind, _, device, precision = where
    model.eval()
    parts = []
    with torch.inference_mode(), autocast(device, precision):
        for idx in by_length([h.shape[0] for h in cache], batch_size):
            hidden = kind.hidden_to(kind.stack_hidden([cache[i] for i in idx]), device)
            parts.append((idx, kind.top(model, hidden, depth).float().cpu()))
    return assemble(parts, len(cache), model.config.num_labels)


# -- stage shell ---------------------------------------------------------------------------------------


def save_model(
    model: PreTrainedModel,
    processor: Any,
    out_dir: Path,
    metadata: dict[str, Any],
    kind: TaskKind | None = None,
) -> None:
    """Weights (safetensors only), the input processor (tokenizer, image preprocessing) as `kind` saves
    it (default: text), label maps in config.json, and transferline.json lineage."""
    import shutil

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if hasattr(model, "merge_and_unload"):  # PEFT: the adapters alone, and a merged copy for serving
        model.save_pretrained(out_dir / ADAPTER_DIR)
        model = model.merge_and_unload()
    model.save_pretrained(out_dir)  # transformers 5 always writes model.safetensors
    (kind or load_task("text-classification", None)).save_processor(processor, out_dir)
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
    kind = task_of(cfg)
    train, validation = read_split(paths, "train"), read_split(paths, "validation")
    identity = run_identity(paths, cfg, base)
    checkpoint_dir = paths.checkpoints_dir / identity[:16]
    train_cfg, activations, found, kept = cfg.train, None, None, None
    if cfg.train.strategy == AUTO:  # choose the strategy first (kept beside the checkpoints: resumable)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("train.strategy: auto searches in one process; name a strategy under torchrun")
        record = checkpoint_dir / search.RECORD_FILE
        found, activations, kept = search.run_search(
            base.path, train, validation, cfg.data.labels, cfg.train, record, (kind, paths.prepared_dir)
        )
        train_cfg = search.chosen_config(cfg.train, found)
    if kept is not None:  # the search's last trial already trained the chosen configuration in full
        model, processor, result = kept.model, kept.processor, kept.result
    else:
        model, processor, result = fine_tune(
            base.path, train, validation, cfg.data.labels, train_cfg,
            checkpoint_dir=checkpoint_dir, activations=activations, kind=kind, snapshot=paths.prepared_dir,
        )  # fmt: skip
    if found is not None:  # the chosen model's trial when the search trained it, else None
        searched = found.to_dict()
        searched["chosen"]["kept_trial"] = kept.trial if kept else None
        result = replace(result, search=searched)
    metadata = {
        "task": {"type": cfg.task.type, "options": _task_options(cfg)},
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
        save_model(model, processor, paths.challenger_dir, metadata, kind)
        checkpoints.clear(checkpoint_dir)  # the model is saved: nothing left to resume
    return replace(result, model_dir=paths.challenger_dir)


def _task_options(cfg: Config) -> dict[str, Any] | None:
    """The task's own params section, recorded with the model: serving reads its inputs the same way."""
    from tasks.kinds import TASKS

    section = TASKS[cfg.task.type].options_section
    return None if section is None else getattr(cfg, section).model_dump(mode="json")


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
