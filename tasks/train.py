"""train stage: fine-tune the pretrained encoder with a fresh classification head.

A plain torch loop rather than transformers' Trainer: batches are grouped by length and padded per
batch (reviews average ~27 tokens, so padding to a fixed length would waste most of the compute), bf16
autocast is used where the hardware has it, and the best epoch on the validation split is what is kept.
Embeddings and the lowest ``train.freeze_layers`` encoder layers stay fixed: they hold the general
language knowledge that transfers, while upper layers and the head adapt to the task.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sys
import time
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
from tasks.runtime import configure_environment

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("transferline.train")

METADATA_FILE = "transferline.json"


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
    trainable_params: int
    total_params: int
    best_epoch: int
    best_val_accuracy: float
    seconds: float
    history: list[EpochStats] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {
            "best_val_accuracy": self.best_val_accuracy,
            "train_seconds": self.seconds,
            "trainable_params": float(self.trainable_params),
            "train_samples_per_s": self.history[-1].samples_per_s if self.history else 0.0,
        }


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

    if preference != "auto":
        return preference
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> Any:
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# -- model ---------------------------------------------------------------------------------------------


def build_model(base: Path, labels: list[str]) -> PreTrainedModel:
    """The pretrained encoder with a freshly initialised head for `labels` (label2id saved in its config)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "classifier MISSING" load report is expected: it is the new head
    hf_logging.disable_progress_bar()
    return AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        use_safetensors=True,
    )


def encoder_layers(model: PreTrainedModel) -> tuple[Any, Any]:
    """(embeddings module, list of encoder layers) of a BERT-like model."""
    backbone = getattr(model, model.base_model_prefix)
    return backbone.embeddings, backbone.encoder.layer


def freeze(model: PreTrainedModel, freeze_embeddings: bool, freeze_layers: int) -> tuple[int, int]:
    """Fix embeddings and the lowest `freeze_layers` layers; returns (trainable, total) parameter counts."""
    embeddings, layers = encoder_layers(model)
    if freeze_layers > len(layers):
        raise ConfigError(
            f"train.freeze_layers: {freeze_layers} exceeds the model's {len(layers)} encoder layers"
        )
    frozen = ([embeddings] if freeze_embeddings else []) + list(layers[:freeze_layers])
    for module in frozen:
        for p in module.parameters():
            p.requires_grad = False
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


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

    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = torch.empty((len(encoded), model.config.num_labels), dtype=torch.float32)
    with torch.inference_mode(), autocast(device, precision):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = collate([encoded[i] for i in idx], pad_id)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out[idx] = logits.float().cpu()
    return out


# -- the loop ------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _optimizer(model: PreTrainedModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    import torch

    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            # Standard BERT recipe: no weight decay on biases and LayerNorm weights (the 1-D tensors).
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> Any:
    import torch

    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:  # linear warm-up, then linear decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fine_tune(
    base: Path,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    labels: list[str],
    cfg: TrainConfig,
    progress: bool | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, TrainResult]:
    """Fine-tune `base` on train; keep the epoch with the best validation accuracy.

    Args:
        base: a Hugging Face model folder (config.json + model.safetensors + tokenizer).
        train, validation: frames with `text` and `label` columns; labels must be in `labels`.
        labels: class names in class-id order.
        cfg: the `train` section of params.yaml.
        progress: show a progress bar (default: when stderr is a terminal).
    Returns:
        (model with the best weights loaded, tokenizer, TrainResult with model_dir unset).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    started = time.perf_counter()
    torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
    seed_everything(cfg.seed)
    device = choose_device(cfg.device)
    precision = choose_precision(cfg.precision, device)

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = build_model(base, labels)
    trainable, total = freeze(model, cfg.freeze_embeddings, cfg.freeze_layers)
    model.to(device)
    log.info(
        "fine-tuning on %s (%s): %d train / %d validation rows, %s of %s parameters trainable",
        device, precision, len(train), len(validation), f"{trainable:,}", f"{total:,}",
    )  # fmt: skip

    label_id = {label: i for i, label in enumerate(labels)}
    x_train = encode(tokenizer, train[TEXT].tolist(), cfg.max_length)
    y_train = torch.tensor([label_id[v] for v in train[LABEL]], dtype=torch.long)
    x_val = encode(tokenizer, validation[TEXT].tolist(), cfg.max_length)
    y_val = torch.tensor([label_id[v] for v in validation[LABEL]], dtype=torch.long)
    pad_id = tokenizer.pad_token_id or 0
    lengths = [len(s) for s in x_train]

    rng = random.Random(cfg.seed)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    optimizer = _optimizer(model, cfg)
    scheduler = _schedule(optimizer, steps_per_epoch * cfg.epochs, cfg.warmup_ratio)
    show = sys.stderr.isatty() if progress is None else progress
    log_every = max(1, steps_per_epoch // 4)

    history: list[EpochStats] = []
    best_acc, best_epoch, best_state = -1.0, 0, None
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(
            length_grouped_batches(lengths, cfg.batch_size, rng),
            desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=not show, dynamic_ncols=True,
        )  # fmt: skip
        for step, batch in enumerate(bar, start=1):
            ids, mask = collate([x_train[i] for i in batch], pad_id)
            with autocast(device, precision):
                out = model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), labels=y_train[batch].to(device)
                )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(batch)
            loss_sum += out.loss.item() * len(batch)
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", rate=f"{rate:.0f}/s")
            # Without a bar (CI logs, Prefect workers), a line each quarter epoch shows the run is alive.
            if not show and step % log_every == 0 and step < steps_per_epoch:
                log.info(
                    "epoch %d/%d: %d/%d batches, loss %.4f, %.0f samples/s, ~%.0f s left in epoch",
                    epoch, cfg.epochs, step, steps_per_epoch, loss_sum / seen, rate,
                    (len(x_train) - seen) / rate,
                )  # fmt: skip
        bar.close()
        seconds = time.perf_counter() - t0
        logits = predict_logits(model, x_val, pad_id, 128, device, precision)
        val_acc = float((logits.argmax(-1) == y_val).float().mean())
        stats = EpochStats(epoch, loss_sum / max(seen, 1), val_acc, seconds, seen / seconds)
        history.append(stats)
        log.info(
            "epoch %d/%d: loss %.4f, validation accuracy %.4f, %.0f samples/s",
            epoch, cfg.epochs, stats.train_loss, val_acc, stats.samples_per_s,
        )  # fmt: skip
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None and best_epoch != cfg.epochs:
        model.load_state_dict(best_state)
        log.info("keeping epoch %d (best validation accuracy %.4f)", best_epoch, best_acc)
    result = TrainResult(
        model_dir=Path(),
        device=str(device),
        precision=precision,
        trainable_params=trainable,
        total_params=total,
        best_epoch=best_epoch,
        best_val_accuracy=best_acc,
        seconds=time.perf_counter() - started,
        history=history,
    )
    return model, tokenizer, result


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
    model.save_pretrained(out_dir)  # transformers 5 always writes model.safetensors
    tokenizer.save_pretrained(out_dir)
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def run_train(paths: ProjectPaths, cfg: Config, base: BaseModelRef | None = None) -> TrainResult:
    base = base or load_base_ref(paths)
    train, validation = read_split(paths, "train"), read_split(paths, "validation")
    model, tokenizer, result = fine_tune(base.path, train, validation, cfg.data.labels, cfg.train)
    metadata = {
        "labels": cfg.data.labels,
        "label2id": {label: i for i, label in enumerate(cfg.data.labels)},
        "max_length": cfg.train.max_length,
        "params_sha256": cfg.digest("data", "model", "train"),
        "data_sha256": data_sha256(paths),
        "base_model": base.manifest(),
        "training": {k: v for k, v in asdict(result).items() if k not in ("model_dir", "history")},
        "history": [asdict(h) for h in result.history],
    }
    save_model(model, tokenizer, paths.challenger_dir, metadata)
    return replace(result, model_dir=paths.challenger_dir)


@task(name="fine-tune", cache_policy=caching.TRAIN)
def train_task(paths: ProjectPaths, cfg: Config, base: BaseModelRef) -> TrainResult:
    return run_train(paths, cfg, base)


def main() -> None:
    """DVC stage entry point: ``python -m tasks.train`` from the project root."""
    configure_environment()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = ProjectPaths.at(".")
    try:
        result = run_train(paths, load_config(paths.params))
    except ConfigError as err:
        print(f"train: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"train: best epoch {result.best_epoch}, validation accuracy {result.best_val_accuracy:.4f}")


if __name__ == "__main__":
    main()
