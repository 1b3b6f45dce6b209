"""Text drift: text length (KS), out-of-vocabulary rate and sentence-embedding (MMD) checks.

What each check computes is described in tasks/drift.py's module doc; the text task module
(tasks/kinds/text.py) runs them for the drift stage, and the token task on its sentences.
torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tasks.drift_checks import DriftCheck, mmd_permutation_test, skipped
from tasks.kinds.sequences import by_length, collate
from tasks.kinds.text import TEXT

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tasks.config import DriftConfig

logger = logging.getLogger("transferline.drift")

MAX_LENGTH = 64  # tokens embedded per text
EMBED_BATCH = 64
QUANTIZE = True  # embed with int8 dynamic quantization of the encoder's linear layers (see _quantized)
_WORD = re.compile(r"\w+")
# Salts of the per-check random streams, so each check's sample does not depend on the others' policies.
SALT = {"oov": 1, "embedding": 2}


def _texts(frame: pd.DataFrame) -> pd.Series:
    return frame[TEXT].dropna().astype(str)


def length_check(reference: pd.DataFrame, current: pd.DataFrame, cfg: DriftConfig) -> DriftCheck:
    from scipy.stats import ks_2samp

    a = _texts(reference).str.len().to_numpy()
    b = _texts(current).str.len().to_numpy()
    if len(a) == 0 or len(b) == 0:
        return skipped("length", cfg, "one side has no texts")
    result = ks_2samp(a, b)
    qa, qb = np.percentile(a, [10, 50, 90]), np.percentile(b, [10, 50, 90])
    return DriftCheck(
        "length",
        float(result.statistic),
        cfg.alpha,
        float(result.pvalue),
        bool(result.pvalue < cfg.alpha),
        cfg.length,
        "text length in characters, q10/q50/q90 reference → current:"
        f" {'/'.join(f'{v:.0f}' for v in qa)} → {'/'.join(f'{v:.0f}' for v in qb)}",
    )


def words(texts: Sequence[str] | pd.Series) -> list[str]:
    """Lower-cased ``\\w+`` word tokens of all texts (one regex pass over the joined text)."""
    return _WORD.findall("\n".join(texts).lower())


def oov_rate(counts: Counter[str], vocabulary: set[str] | frozenset[str]) -> float:
    """Share of the tokens counted in ``counts`` that are not in ``vocabulary`` (0 when there are none)."""
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return sum(n for w, n in counts.items() if w not in vocabulary) / total


def oov_check(reference: pd.DataFrame, current: pd.DataFrame, cfg: DriftConfig) -> DriftCheck:
    ref = _texts(reference).to_numpy()
    cur = _texts(current)
    if len(ref) < 2 or len(cur) == 0:
        return skipped("oov", cfg, "needs at least 2 reference texts and 1 current text")
    rng = np.random.default_rng([cfg.seed, SALT["oov"]])
    order = rng.permutation(len(ref))
    half = len(ref) // 2
    vocabulary = set(words(ref[order[:half]]))
    held_out = Counter(words(ref[order[half:]]))
    new = Counter(words(cur))
    baseline, rate = oov_rate(held_out, vocabulary), oov_rate(new, vocabulary)
    increase = rate - baseline
    unseen = [w for w, _ in new.most_common() if w not in vocabulary][:5]
    examples = f"; most frequent unseen words: {', '.join(unseen)}" if unseen and increase > 0 else ""
    return DriftCheck(
        "oov",
        increase,
        cfg.max_oov_increase,
        None,
        increase > cfg.max_oov_increase,
        cfg.oov,
        f"{rate:.1%} of current word tokens are unseen in the vocabulary of half the reference"
        f" ({len(vocabulary):,} words) vs {baseline:.1%} of the other half's tokens:"
        f" {increase * 100:+.1f} points{examples}",
    )


@functools.lru_cache(maxsize=2)
def _load_encoder(encoder_dir: str, quantize: bool) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # a classifier checkpoint's unused head weights are expected
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = AutoModel.from_pretrained(encoder_dir, use_safetensors=True)
    model.eval()
    if quantize:
        model = _quantized(model)
    return tokenizer, model


def _quantized(model: PreTrainedModel) -> PreTrainedModel:
    """Linear layers with int8 weights (per output channel) and dynamically quantized activations.

    Faster on CPU than fp32 at a small cost in embedding fidelity, which does not bias the test: both samples
    go through the same quantized encoder, so the two-sample test stays valid. Falls back to fp32 when this
    torch build cannot quantize.
    """
    import warnings

    import torch

    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.10+ announces the move of this API to torchao
            return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    except Exception as err:  # an unsupported backend: exactness over speed
        logger.info("drift: no int8 quantization (%s: %s); embedding in fp32", type(err).__name__, err)
        return model


def embed(
    texts: Sequence[str],
    encoder_dir: Path,
    max_length: int = MAX_LENGTH,
    batch_size: int = EMBED_BATCH,
    quantize: bool = QUANTIZE,
) -> np.ndarray:
    """(N, H) float32 sentence embeddings in input order: mean pooling over the mask, L2-normalised.

    Texts are embedded in batches of similar token length (little padding) and put back in input order.
    """
    import torch

    tokenizer, model = _load_encoder(str(Path(encoder_dir).resolve()), quantize)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    pad_id = tokenizer.pad_token_id or 0
    out = torch.empty((len(encoded), model.config.hidden_size), dtype=torch.float32)
    with torch.inference_mode():
        for idx in by_length([len(s) for s in encoded], batch_size):
            ids, mask = collate([encoded[i] for i in idx], pad_id)
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1)
    return out.numpy()


def embedding_check(
    reference: pd.DataFrame, current: pd.DataFrame, cfg: DriftConfig, encoder_dir: Path | None
) -> DriftCheck:
    if encoder_dir is None:
        return skipped("embedding", cfg, "no encoder folder given (encoder_dir=None)")
    ref, cur = _texts(reference).to_numpy(), _texts(current).to_numpy()
    if len(ref) < 2 or len(cur) < 2:
        return skipped("embedding", cfg, "needs at least 2 texts on each side")
    rng = np.random.default_rng([cfg.seed, SALT["embedding"]])
    a = ref[rng.choice(len(ref), min(len(ref), cfg.sample_rows), replace=False)]
    b = cur[rng.choice(len(cur), min(len(cur), cfg.sample_rows), replace=False)]
    vectors = embed([*a, *b], Path(encoder_dir))
    x, y = vectors[: len(a)], vectors[len(a) :]
    mmd2, p_value, bandwidth = mmd_permutation_test(x, y, cfg.permutations, rng)
    mean_gap = float(np.linalg.norm(x.mean(0) - y.mean(0)))
    return DriftCheck(
        "embedding",
        mmd2,
        cfg.alpha,
        p_value,
        p_value < cfg.alpha,
        cfg.embedding,
        f"{len(a):,} reference vs {len(b):,} current texts embedded; RBF bandwidth {bandwidth:.3f},"
        f" mean-embedding distance {mean_gap:.3f}, {cfg.permutations} permutations",
    )


def length_panel(axes: Any, reference: pd.DataFrame, current: pd.DataFrame) -> None:
    """Text-length histograms, reference vs current, on one matplotlib axes of the drift plot."""
    a, b = (frame[TEXT].dropna().astype(str).str.len().to_numpy() for frame in (reference, current))
    both = np.concatenate([a, b]) if len(a) + len(b) else np.zeros(1)
    top = max(1.0, float(np.percentile(both, 99)))  # a few very long texts would squash the histogram
    bins = np.linspace(0, top, 40)
    for name, values in (("reference", a), ("current", b)):
        if len(values):
            axes.hist(np.minimum(values, top), bins=bins, density=True, alpha=0.5, label=name)
    axes.set_xlabel("characters (longest 1% in the last bin)")
    axes.set_title("text length")
    axes.legend()
