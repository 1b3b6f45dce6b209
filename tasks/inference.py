"""Inference: device and precision, length-sorted batches, and the Predictor of a saved model.

One path from texts to logits, shared by training's validation passes, evaluation, serving, batch
scoring and drift, so that the label the gate saw offline is the label that is served. The steps that
know the input is text (tokenising, padding token ids) are kept together in their own section; what
runs the model on a batch (device, precision, batching, ordering) does not look inside the inputs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.config import ConfigError
from tasks.kinds import recorded, task_of_model, text_forward
from tasks.kinds.base import class_names

# the text batching helpers, imported from here by training and its tests
from tasks.kinds.sequences import by_length, collate, encode, padding_id  # noqa: F401
from tasks.paths import METADATA_FILE  # noqa: F401  (imported from here by training and the registry)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from tasks.kinds.base import TaskKind

# Batch of the inference passes inside training (validation, the frozen-layer cache): batches are
# length-sorted, so larger ones save little padding and only raise peak memory.
INFERENCE_BATCH = 32
# The prediction recorded for a row whose logits are NaN/inf: in no class, so never counted correct.
NON_FINITE = "<non-finite>"


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

    bf16: the whole model, so LayerNorm, residual sums and attention run in bf16 too: faster than bf16 Linear
    layers under autocast (`python bench/serving.py` measures the served path), with logits within bf16
    rounding of autocast's (tests/unit/test_transfer.py). Evaluation, serving and batch scoring all load
    models through here, so the gate scores what is served. fp16 (CUDA only): Linear layers only, as autocast
    would round them; LayerNorm, embeddings and softmax keep fp32, since fp16's range is too narrow for them.
    """
    import torch

    if precision == "bf16":
        model.to(torch.bfloat16)
    elif precision == "fp16":
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(torch.float16)


# -- batched passes ------------------------------------------------------------------------------------


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
    out = torch.empty((len(encoded), model.config.num_labels), dtype=torch.float32)
    with torch.inference_mode(), autocast(device, precision):
        for idx in by_length([len(s) for s in encoded], batch_size):
            ids, mask = collate([encoded[i] for i in idx], pad_id)
            out[idx] = text_forward.logits(model, ids.to(device), mask.to(device)).float().cpu()
    return out


def predict_inputs(
    model: PreTrainedModel, inputs: Any, batch_size: int, where: tuple[TaskKind, Any, Any, str]
) -> torch.Tensor:
    """Logits (N, C) of the kind's encoded `inputs`, in input order; `where`: (kind, processor, device,
    precision). Batches follow ``inputs.sizes`` (text: similar lengths together) and are put back after."""
    import torch

    kind, processor, device, precision = where
    model.eval()
    parts = []
    with torch.inference_mode(), autocast(device, precision):
        for idx in by_length(inputs.sizes, batch_size):
            batch = {k: v.to(device) for k, v in kind.collate(inputs, idx, processor).items()}
            parts.append((idx, kind.logits(model, batch).float().cpu()))
    return assemble(parts, len(inputs), model.config.num_labels)


def assemble(parts: list[tuple[list[int], torch.Tensor]], n: int, num_labels: int) -> torch.Tensor:
    """Batches of logits put back in input order: (N, C) per example, or (N, T, C) per position (token
    classification), each batch's positions padded with zeros to the longest T of all batches."""
    import torch

    if not parts or parts[0][1].dim() == 2:
        out = torch.empty((n, num_labels), dtype=torch.float32)
        for idx, logits in parts:
            out[idx] = logits
        return out
    out = torch.zeros((n, max(logits.shape[1] for _, logits in parts), num_labels), dtype=torch.float32)
    for idx, logits in parts:
        out[idx, : logits.shape[1]] = logits
    return out


# -- a saved model -------------------------------------------------------------------------------------


def _recorded_max_length(model_dir: Path, default: int) -> int:
    """The max length `model_dir` was trained with (its METADATA_FILE), else `default`."""
    return recorded(model_dir).get("max_length", default)


class Predictor:
    """A saved model loaded once (safetensors only) for batch scoring and latency measurement."""

    def __init__(self, model_dir: Path, max_length: int) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model_dir = model_dir
        self.kind = task_of_model(model_dir)
        self.max_length = _recorded_max_length(model_dir, max_length)  # score as the model was trained
        self.processor = self.kind.processor(model_dir, self.max_length)
        self.model = self.kind.load_model(model_dir)
        self.device = choose_device("auto")
        self.precision = choose_precision("auto", self.device)
        self.model.to(self.device).eval()
        cast_for_inference(self.model, self.precision)

    @property
    def tokenizer(self) -> Any:
        """The processor of a text model (its tokenizer); kept for callers that tokenise themselves."""
        return self.processor

    def logits(self, texts: list[Any], batch_size: int) -> torch.Tensor:
        """Logits (N, C) in input order: the one inference path of evaluation, serving and batch scoring.
        `texts`: the task's inputs (texts; image paths, bytes or decoded images)."""
        inputs = self.kind.encode_items(list(texts), self.processor)
        where = (self.kind, self.processor, self.device, self.precision)
        return predict_inputs(self.model, inputs, batch_size, where)

    def predict(self, texts: list[Any], batch_size: int) -> list[str]:
        """Label names, in input order; NON_FINITE where the model's outputs are not numbers. Per-position
        logits (token classification) give each example's sub-token tags joined by spaces."""
        import torch

        id2label = self.model.config.id2label
        logits = self.logits(texts, batch_size)
        finite = torch.isfinite(logits).flatten(1).all(-1).tolist()
        best = logits.argmax(-1).tolist()  # (N,) or (N, T)
        labels = [id2label[i] if isinstance(i, int) else " ".join(id2label[j] for j in i) for i in best]
        return [label if ok else NON_FINITE for label, ok in zip(labels, finite, strict=True)]


def class_predictions(predictor: Predictor, items: list[Any], batch_size: int) -> list[dict[str, Any]]:
    """Per input of a classifier: its label, the label's probability and every class's probability."""
    import torch

    labels = class_names(predictor.model.config)
    probs = torch.softmax(predictor.logits(items, batch_size).float(), dim=-1)
    return [
        {"label": labels[best], "score": row[best], "probabilities": dict(zip(labels, row, strict=True))}
        for row, best in zip(probs.tolist(), probs.argmax(-1).tolist(), strict=True)
    ]


def class_columns(predictions: list[dict[str, Any]], labels: list[str]) -> dict[str, list]:
    """A classifier's predictions as table columns: prediction, score and prob_<label> per class."""
    columns: dict[str, list] = {
        "prediction": [p["label"] for p in predictions],
        "score": [p["score"] for p in predictions],
    }
    for label in labels:
        columns[f"prob_{label}"] = [p["probabilities"][label] for p in predictions]
    return columns


# -- latency -------------------------------------------------------------------------------------------

# Single-example latency: each of evaluate.latency_inputs inputs is timed once per window, in
# evaluate.latency_windows windows, and keeps its fastest time; the p95 is taken over the inputs. What
# differs between inputs (their length) is latency; what differs between windows of one input (other work)
# is not.
LATENCY_WARMUP = 5


@dataclass(frozen=True)
class Latency:
    """Single-example latency of one model: text -> label, tokenising included, as a request is served."""

    p95_ms: float  # p95 over the texts of each one's fastest `clock` time: what the budget is checked against
    wall_p95_ms: float  # the same of wall time, for information: other load inflates it
    clock: str  # "thread CPU time" on a CPU (what the call takes on an idle core), else "wall time"
    threads: int  # torch intra-op threads during the measurement
    windows: int
    texts: int

    def method(self) -> str:
        """How it was measured, in one line for reports."""
        return (
            f"p95 over {self.texts} inputs of each one's fastest {self.clock} in {self.windows} windows, "
            f"{self.threads} inference thread (wall-time p95 {self.wall_p95_ms:.1f} ms)"
        )


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch intra-op thread inside the block. On a busy machine a pool of threads waits at every
    operator for its slowest member, which the scheduler has parked behind other work: one thread does
    not wait on anybody, and its CPU time is the whole cost of the call (the tokenizer runs in the calling
    thread too: TOKENIZERS_PARALLELISM is off, tasks/runtime.py)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_latency(
    predictors: Sequence[Predictor],
    texts: list[str],
    windows: int,
    count: int,
    warmup: int = LATENCY_WARMUP,
) -> list[Latency]:
    """The single-example latency of each predictor, measured so that other load does not decide it.

    On a CPU the clock is the calling thread's CPU time with one inference thread: time the scheduler
    gives to other processes is not counted, so the figure is what the call takes on an idle core, and a
    model slower than that still shows it. Each text is timed in several windows and keeps its fastest
    time, which leaves out what a burst of other work added to one window. The predictors take turns on
    each text inside the same windows, so none is measured at a quieter moment than another. Wall time is
    kept beside it for the report.

    Returns:
        One Latency per predictor, in order.
    """
    import numpy as np

    sample = [texts[i % len(texts)] for i in range(count)]
    cpu = all(p.device.type == "cpu" for p in predictors)
    clock = time.thread_time if cpu else time.perf_counter
    spent = np.zeros((len(predictors), windows, count, 2))  # milliseconds of the clock and of the wall
    with single_thread():
        for predictor in predictors:
            for text in sample[:warmup]:
                predictor.predict([text], batch_size=1)
        for w in range(windows):
            for t, text in enumerate(sample):
                for m, predictor in enumerate(predictors):
                    wall, tick = time.perf_counter(), clock()
                    predictor.predict([text], batch_size=1)
                    spent[m, w, t] = ((clock() - tick) * 1000, (time.perf_counter() - wall) * 1000)
    p95 = np.percentile(spent.min(axis=1), 95, axis=1)  # (models, 2): over texts, of their fastest window
    return [
        Latency(
            p95_ms=float(p95[m, 0]),
            wall_p95_ms=float(p95[m, 1]),
            clock="thread CPU time" if cpu else "wall time",
            threads=1,
            windows=windows,
            texts=count,
        )
        for m in range(len(predictors))
    ]
