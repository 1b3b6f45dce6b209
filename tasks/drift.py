"""drift stage: how far this run's training data has moved from the champion's training data.

Validation judges the new data on its own; drift compares it with what the deployed model (the champion)
was trained on. Four checks, each with a policy from the ``drift`` section of params.yaml
(``ignore``: not computed; ``warn``: drift is reported as a warning; ``block``: drift stops the run):

* ``label``: population stability index of the declared labels' shares,
  ``PSI = sum_k (q_k - p_k) * ln(q_k / p_k)`` with reference shares p, current shares q, each share floored
  at ``EPSILON`` so an empty class stays finite; drift when ``PSI > drift.max_label_psi``. A chi-square
  test of the 2 x K count table is reported for information only (with many rows it flags tiny shifts).
* ``length``: two-sample Kolmogorov-Smirnov test of the text lengths in characters; drift when
  ``p < drift.alpha``. The statistic is KS's D (largest gap between the two length CDFs).
* ``oov``: out-of-vocabulary rate, words being lower-cased ``\\w+`` tokens. The reference is split into two
  random halves A and B (seeded); the vocabulary is A's words. ``rate(X)`` = share of X's word tokens not
  in that vocabulary. Statistic = ``rate(current) - rate(B)``: the rise over the rate that new text from
  the *same* distribution already has (new names, typos). Drift when it exceeds ``drift.max_oov_increase``.
* ``embedding``: sentence embeddings of up to ``drift.sample_rows`` random rows per side (seeded) from the
  pretrained encoder (mean pooling over the attention mask, L2-normalised, texts cut at ``MAX_LENGTH``
  tokens, linear layers int8-quantized for CPU speed). Statistic = squared maximum mean discrepancy
  (biased V-statistic) with an RBF kernel whose bandwidth is the median pairwise distance of the pooled
  sample; p-value = share of ``drift.permutations``
  random relabellings of the pooled sample with an MMD² at least as large (``(1 + count) / (1 + B)``).
  Drift when ``p < drift.alpha``. Skipped when no encoder folder is given.

torch, transformers, scipy and matplotlib are imported inside the functions: flow definitions and the CLI
import this module without paying for them.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from prefect import task

from tasks import caching
from tasks.champion import load_champion
from tasks.config import Config, ConfigError, DriftConfig, load_config
from tasks.download import load_base_ref
from tasks.kinds import load_task, task_of
from tasks.paths import ProjectPaths
from tasks.prepare import LABEL, TEXT
from tasks.reports import ReportedStop
from tasks.runtime import configure_environment, stage_logging

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tasks.kinds.base import TaskKind

logger = logging.getLogger("transferline.drift")

CHECKS = ("label", "length", "oov", "embedding")
# Checks whose threshold applies to a p-value (drift when p < alpha) rather than to the statistic.
P_VALUE_CHECKS = frozenset({"length", "embedding"})
EPSILON = 1e-4  # floor of a label share in the PSI, so an empty class gives a large but finite term
MAX_LENGTH = 64  # tokens embedded per text
EMBED_BATCH = 64
QUANTIZE = True  # embed with int8 dynamic quantization of the encoder's linear layers (see _quantized)
_WORD = re.compile(r"\w+")
_STAT_NAMES = {"label": "PSI", "length": "D", "oov": "Δ", "embedding": "MMD²"}
# Salts of the per-check random streams, so each check's sample does not depend on the others' policies.
_SALT = {"oov": 1, "embedding": 2}


# -- report ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftCheck:
    """One check's verdict. ``statistic`` is None when the check was not computed (ignored or skipped).

    ``threshold`` bounds the statistic for ``label`` and ``oov`` (drift when above) and the p-value for
    ``length`` and ``embedding`` (drift when p < threshold, i.e. ``drift.alpha``).
    """

    name: str  # label | length | oov | embedding
    statistic: float | None
    threshold: float
    p_value: float | None
    drifted: bool
    policy: str  # ignore | warn | block
    detail: str  # one human sentence

    @property
    def status(self) -> str:
        """ignored | skipped | ok | warning | blocking."""
        if self.policy == "ignore":
            return "ignored"
        if self.statistic is None:
            return "skipped"
        if not self.drifted:
            return "ok"
        return "blocking" if self.policy == "block" else "warning"

    def condition(self) -> str:
        """The drift condition as text, e.g. ``PSI > 0.1`` or ``p < 0.01``."""
        if self.name in P_VALUE_CHECKS:
            return f"p < {self.threshold:g}"
        return f"{_STAT_NAMES.get(self.name, 'statistic')} > {self.threshold:g}"

    def headline(self) -> str:
        """Statistic (and p-value) vs threshold in a few words, e.g. ``PSI 0.52 > 0.1``."""
        if self.statistic is None:
            return self.status
        stat = f"{_STAT_NAMES.get(self.name, 'statistic')} {_num(self.statistic)}"
        if self.name in P_VALUE_CHECKS and self.p_value is not None:
            op = "<" if self.p_value < self.threshold else ">="
            return f"{stat}, p {_num(self.p_value)} {op} alpha {self.threshold:g}"
        op = ">" if self.statistic > self.threshold else "<="
        return f"{stat} {op} {self.threshold:g}"


@dataclass(frozen=True)
class DriftReport:
    checks: tuple[DriftCheck, ...]
    blocked: bool  # some check with policy block found drift
    warnings: list[str]  # one line per check with policy warn that found drift
    reference_rows: int
    current_rows: int

    @property
    def blocking(self) -> tuple[DriftCheck, ...]:
        return tuple(c for c in self.checks if c.status == "blocking")

    @property
    def drifted(self) -> tuple[DriftCheck, ...]:
        return tuple(c for c in self.checks if c.drifted)

    def check(self, name: str) -> DriftCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no drift check named {name!r}; checks: {', '.join(c.name for c in self.checks)}")

    def verdict(self) -> str:
        if self.blocked:
            return "BLOCKED"
        return "WARNING" if self.warnings else "no drift"

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(
            {
                "verdict": self.verdict(),
                "blocked": self.blocked,
                "warnings": list(self.warnings),
                "reference_rows": self.reference_rows,
                "current_rows": self.current_rows,
                "checks": [{**asdict(c), "status": c.status} for c in self.checks],
            }
        )

    def summary_markdown(self) -> str:
        lines = [
            f"# Data drift: {self.verdict()}",
            "",
            f"Reference (the champion's training data): {self.reference_rows:,} rows; current (this run's"
            f" training data): {self.current_rows:,} rows.  ",
            f"{len(self.drifted)} of {sum(c.statistic is not None for c in self.checks)} computed checks"
            " found drift.",
            "",
            "| Check | Statistic | Drift if | p-value | Policy | Verdict | Detail |",
            "|---|---|---|---|---|---|---|",
        ]
        verdicts = {
            "ignored": "ignored",
            "skipped": "skipped",
            "ok": "no drift",
            "warning": "**drift (warning)**",
            "blocking": "**DRIFT (blocks)**",
        }
        for c in self.checks:
            stat = "" if c.statistic is None else f"{_STAT_NAMES.get(c.name, '')} {_num(c.statistic)}"
            p = "" if c.p_value is None else _num(c.p_value)
            lines.append(
                f"| {c.name} | {stat} | {c.condition()} | {p} | {c.policy} | {verdicts[c.status]}"
                f" | {_md_cell(c.detail)} |"
            )
        if self.warnings:
            lines += ["", "## Warnings", ""] + [f"- {_md_cell(w)}" for w in self.warnings]
        if self.blocked:
            lines += ["", "## Blocking", ""]
            lines += [f"- **{c.name}**: {c.headline()}: {_md_cell(c.detail)}" for c in self.blocking]
        if self.drifted:
            lines += ["", "## What to do", "", *[f"- {h}" for h in _hints(self)]]
        return "\n".join(lines) + "\n"

    def error_message(self, report_dir: Path | None = None) -> str:
        where = f"{Path(report_dir).as_posix()}/" if report_dir is not None else "reports/drift/"
        lines = [
            f"data drift blocks this run: {len(self.blocking)} check(s) with policy 'block' found drift"
            f" between the champion's training data ({self.reference_rows:,} rows) and this run's"
            f" ({self.current_rows:,} rows):"
        ]
        lines += [f"  - {c.name}: {c.headline()}. {c.detail}" for c in self.blocking]
        lines.append("What to do:")
        lines += [f"  - {h}" for h in _hints(self, where)]
        return "\n".join(lines)


def _hints(report: DriftReport, where: str = "reports/drift/") -> list[str]:
    hints = [
        f"inspect {where} (summary.md, report.json, drift.png) to see what changed;",
        "if the new data is wrong (a broken export, another source, a filter), fix the data"
        " (data.source) and re-run;",
    ]
    if report.blocked:
        keys = " / ".join(f"drift.{c.name}" for c in report.blocking)
        hints.append(
            f"if the change is real and intended, set {keys}: warn in params.yaml deliberately and re-run:"
            " once promoted, the new champion's data becomes the reference."
        )
    else:
        hints.append(
            "if the change is real and intended, nothing is needed: warnings do not stop the run, and once"
            " promoted, the new champion's data becomes the reference."
        )
    return hints


class DriftBlocked(ReportedStop):
    """A check with policy ``block`` found drift; ``str(err)`` names each check and what to do."""

    report: DriftReport


# -- core -----------------------------------------------------------------------------------------------
def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    labels: Sequence[str],
    cfg: DriftConfig,
    encoder_dir: Path | None,
    kind: TaskKind | None = None,
    snapshots: tuple[Path, Path] = (Path(), Path()),
) -> DriftReport:
    """Compare ``current`` with ``reference`` (both with the task's input column and ``label``); see
    module doc. The label shares are compared for every task, the rest is the task's (`kind`, default
    text: length, vocabulary, embeddings; images: embeddings of the files in `snapshots`).

    ``encoder_dir`` is a Hugging Face model folder (weights + processor) used for the embedding check;
    None skips that check. Nothing is written to disk.
    """
    kind = kind or load_task("text-classification", None)
    for name, frame in (("reference", reference), ("current", current)):
        missing = [c for c in (kind.input_column, LABEL) if c not in frame.columns]
        if missing:
            raise ValueError(f"drift: the {name} data has no {' / '.join(missing)} column(s)")
    labels = list(labels)
    checks = [ignored("label", cfg) or label_check(reference, current, labels, cfg)]
    checks += kind.drift_checks(reference, current, snapshots, cfg, encoder_dir)
    warnings = [f"{c.name} drift: {c.headline()}. {c.detail}" for c in checks if c.status == "warning"]
    report = DriftReport(
        checks=tuple(checks),
        blocked=any(c.status == "blocking" for c in checks),
        warnings=warnings,
        reference_rows=len(reference),
        current_rows=len(current),
    )
    logger.info(
        "drift %s: %s",
        report.verdict(),
        ", ".join(f"{c.name} {c.status}" for c in checks),
    )
    return report


def ignored(name: str, cfg: DriftConfig) -> DriftCheck | None:
    """The entry of a check whose policy is ``ignore`` (not computed); None when it is to be computed."""
    policy = getattr(cfg, name)
    if policy != "ignore":
        return None
    why = f"not computed (drift.{name}: ignore)"
    return DriftCheck(name, None, _threshold(name, cfg), None, False, policy, why)


def _threshold(name: str, cfg: DriftConfig) -> float:
    return {"label": cfg.max_label_psi, "oov": cfg.max_oov_increase}.get(name, cfg.alpha)


def _texts(frame: pd.DataFrame) -> pd.Series:
    return frame[TEXT].dropna().astype(str)


def _skipped(name: str, cfg: DriftConfig, why: str) -> DriftCheck:
    return DriftCheck(name, None, _threshold(name, cfg), None, False, getattr(cfg, name), f"skipped: {why}")


def psi(reference_shares: np.ndarray, current_shares: np.ndarray, epsilon: float = EPSILON) -> float:
    """Population stability index of two share vectors over the same bins, shares floored at epsilon."""
    p = np.maximum(np.asarray(reference_shares, dtype=float), epsilon)
    q = np.maximum(np.asarray(current_shares, dtype=float), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def label_check(
    reference: pd.DataFrame, current: pd.DataFrame, labels: list[str], cfg: DriftConfig
) -> DriftCheck:
    from scipy.stats import chi2_contingency

    ref = reference[LABEL].value_counts().reindex(labels, fill_value=0).to_numpy(dtype=float)
    cur = current[LABEL].value_counts().reindex(labels, fill_value=0).to_numpy(dtype=float)
    if ref.sum() == 0 or cur.sum() == 0:
        side = "reference" if ref.sum() == 0 else "current"
        return _skipped("label", cfg, f"the {side} data has no row with a declared label")
    p, q = ref / ref.sum(), cur / cur.sum()
    value = psi(p, q)
    table = np.vstack([ref, cur])[:, (ref + cur) > 0]
    chi_p = 1.0 if table.shape[1] < 2 else float(chi2_contingency(table).pvalue)
    shares = ", ".join(f"{lab} {a:.1%} → {b:.1%}" for lab, a, b in zip(labels, p, q, strict=True))
    others = {"reference": len(reference) - int(ref.sum()), "current": len(current) - int(cur.sum())}
    undeclared = [f"{n:,} {side}" for side, n in others.items() if n]
    extra = f"; rows with undeclared labels not counted: {', '.join(undeclared)}" if undeclared else ""
    return DriftCheck(
        "label",
        value,
        cfg.max_label_psi,
        chi_p,
        value > cfg.max_label_psi,
        cfg.label,
        f"label shares reference → current: {shares}; chi-square p {_num(chi_p)} (for information){extra}",
    )


def length_check(reference: pd.DataFrame, current: pd.DataFrame, cfg: DriftConfig) -> DriftCheck:
    from scipy.stats import ks_2samp

    a = _texts(reference).str.len().to_numpy()
    b = _texts(current).str.len().to_numpy()
    if len(a) == 0 or len(b) == 0:
        return _skipped("length", cfg, "one side has no texts")
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
        return _skipped("oov", cfg, "needs at least 2 reference texts and 1 current text")
    rng = np.random.default_rng([cfg.seed, _SALT["oov"]])
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

    from tasks.inference import by_length, collate

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


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, permutations: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """(MMD², permutation p-value, bandwidth) of samples x (n, d) and y (m, d) with an RBF kernel.

    MMD² is the biased V-statistic ``w' K w`` with ``w = (1/n, ..., -1/m, ...)``; each permutation
    shuffles w, so all resamples are one (B, N) @ (N, N) product on the fixed kernel matrix.
    """
    z = np.vstack([x, y]).astype(np.float64)
    n, m = len(x), len(y)
    sq = np.einsum("ij,ij->i", z, z)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    upper = d2[np.triu_indices(len(z), k=1)]
    median = float(np.median(upper)) if upper.size else 0.0
    if median <= 0.0:  # (nearly) all points equal: any bandwidth gives MMD² 0
        median = float(upper.max()) if upper.size and upper.max() > 0 else 1.0
    kernel = np.exp(-d2 / (2.0 * median))
    w = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(w @ kernel @ w)
    shuffled = rng.permuted(np.tile(w, (permutations, 1)), axis=1)
    null = np.einsum("bi,bi->b", shuffled @ kernel, shuffled)
    p_value = (1.0 + float(np.sum(null >= observed - 1e-12))) / (1.0 + permutations)
    return max(observed, 0.0), p_value, math.sqrt(median)


def embedding_check(
    reference: pd.DataFrame, current: pd.DataFrame, cfg: DriftConfig, encoder_dir: Path | None
) -> DriftCheck:
    if encoder_dir is None:
        return _skipped("embedding", cfg, "no encoder folder given (encoder_dir=None)")
    ref, cur = _texts(reference).to_numpy(), _texts(current).to_numpy()
    if len(ref) < 2 or len(cur) < 2:
        return _skipped("embedding", cfg, "needs at least 2 texts on each side")
    rng = np.random.default_rng([cfg.seed, _SALT["embedding"]])
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


# -- plot -----------------------------------------------------------------------------------------------
def plot_drift(reference: pd.DataFrame, current: pd.DataFrame, labels: Sequence[str], path: Path) -> None:
    """One PNG: label shares side by side (bars) and text-length histograms, reference vs current."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    labels = list(labels)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = np.arange(len(labels))
    sides = (("reference", reference), ("current", current))
    for offset, (name, frame) in zip((-0.2, 0.2), sides, strict=True):
        counts = frame[LABEL].value_counts().reindex(labels, fill_value=0)
        shares = counts / max(1, int(counts.sum()))
        left.bar(xs + offset, shares.to_numpy(), width=0.4, label=f"{name} ({len(frame):,})")
    left.set_xticks(xs, labels)
    left.set_ylabel("share of rows")
    left.set_title("label shares")
    left.legend()
    if TEXT not in reference.columns:  # inputs without a length (images): the label panel only
        right.set_visible(False)
        _save(fig, path)
        return
    a, b = _texts(reference).str.len().to_numpy(), _texts(current).str.len().to_numpy()
    both = np.concatenate([a, b]) if len(a) + len(b) else np.zeros(1)
    top = max(1.0, float(np.percentile(both, 99)))  # a few very long texts would squash the histogram
    bins = np.linspace(0, top, 40)
    for name, values in (("reference", a), ("current", b)):
        if len(values):
            right.hist(np.minimum(values, top), bins=bins, density=True, alpha=0.5, label=name)
    right.set_xlabel("characters (longest 1% in the last bin)")
    right.set_title("text length")
    right.legend()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- helpers --------------------------------------------------------------------------------------------
def _num(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1 else f"{value:.3g}"
    return f"{value:.2e}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- stage shell ----------------------------------------------------------------------------------------
def run_drift(
    paths: ProjectPaths, cfg: Config, reference: pd.DataFrame | None, encoder_dir: Path | None
) -> DriftReport | None:
    """Compare the prepared train split with ``reference`` and write reports/drift/.

    ``reference`` is the champion's training split (None when there is no champion yet: then only a short
    summary.md is written and None returned). Writes report.json, summary.md and drift.png, replacing the
    folder's previous contents, and raises DriftBlocked after writing when a blocking check found drift.
    """
    from tasks.prepare import read_split

    current = read_split(paths, "train")
    out = paths.drift_dir
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if reference is None:
        (out / "summary.md").write_text(
            "# Data drift: not checked\n\nNo champion yet: nothing to compare this run's training data"
            f" ({len(current):,} rows) with.\n",
            encoding="utf-8",
        )
        logger.info("drift: no champion yet, nothing to compare")
        return None
    kind = task_of(cfg)
    snapshots = (Path(reference.attrs.get("snapshot", ".")), paths.prepared_dir)
    report = detect_drift(reference, current, cfg.data.labels, cfg.drift, encoder_dir, kind, snapshots)
    result = {
        **report.to_dict(),
        "labels": list(cfg.data.labels),
        "thresholds": cfg.drift.model_dump(mode="json"),
        "encoder_dir": None if encoder_dir is None else str(encoder_dir),
    }
    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    (out / "report.json").write_text(text, encoding="utf-8")
    (out / "summary.md").write_text(report.summary_markdown(), encoding="utf-8")
    plot_drift(reference, current, cfg.data.labels, out / "drift.png")
    if report.blocked:
        raise DriftBlocked(report, paths.display(out))
    return report


@task(name="drift", cache_policy=caching.DRIFT)
def drift_task(
    paths: ProjectPaths, cfg: Config, reference: pd.DataFrame | None, encoder_dir: Path | None
) -> DriftReport | None:
    """Prefect task: run_drift, publishing the summary as the "drift-report" markdown artifact."""
    from prefect.artifacts import create_markdown_artifact

    try:
        report = run_drift(paths, cfg, reference, encoder_dir)
    except DriftBlocked as err:
        create_markdown_artifact(
            markdown=err.report.summary_markdown(), key="drift-report", description="data drift"
        )
        for check in err.report.blocking:
            logger.error("drift blocks the run: %s: %s", check.name, check.headline())
        raise
    if report is None:
        create_markdown_artifact(
            markdown=paths.drift_dir.joinpath("summary.md").read_text(encoding="utf-8"),
            key="drift-report",
            description="data drift",
        )
        return None
    for warning in report.warnings:
        logger.warning("%s", warning)
    create_markdown_artifact(markdown=report.summary_markdown(), key="drift-report", description="data drift")
    return report


def main() -> None:
    """DVC stage entry point: ``python -m tasks.drift`` from the project root, against the champion the
    champion stage resolved, with the base model the download stage resolved as the encoder."""
    configure_environment()
    stage_logging()
    paths = ProjectPaths.at(".")
    try:
        cfg = load_config(paths.params)
        champion = load_champion(paths)
        reference = champion.reference() if champion else None
        report = run_drift(paths, cfg, reference, load_base_ref(paths).path)
    except (ConfigError, FileNotFoundError, DriftBlocked) as err:
        print(f"drift: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if report is None:
        print("drift: no champion yet, nothing to compare")
        return
    for warning in report.warnings:
        print(f"drift: {warning}")
    print(f"drift: {len(report.checks)} checks; report in {paths.rel(paths.drift_dir)}/")


if __name__ == "__main__":
    main()
