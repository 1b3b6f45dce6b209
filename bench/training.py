"""Training speed and accuracy of transferline's loop against a plain transformers `Trainer`, in one run.

Four arms on the same model (the packaged MiniLM), the same prepared split of the sample data and the same
hyperparameters (batch size, learning rate, warm-up, weight decay, epochs, max length):

- trainer-full:  `Trainer` with its defaults (fp32, no length grouping, dynamic padding), every weight trains
- ours-full:     transferline `fine_tune`, strategy full (layer_lr_decay 1), precision auto
- trainer-freeze: `Trainer`, embeddings and the lowest 4 of 6 layers frozen
- ours-freeze:   transferline, strategy freeze with freeze_layers 4 and the activation cache

Each arm runs in its own process (so its peak resident memory is its own) and is scored on the test split.
Speed-up = Trainer training wall time / ours (ours includes its per-epoch validation and cache building).

    python bench/training.py                      # full sample data, 3 epochs (~30 min on 2 cores)
    python bench/training.py --rows 2000 --epochs 1

Last line: {"full_speedup", "full_accuracy_delta", "cached_freeze_speedup", "cached_freeze_accuracy_delta",
"peak_rss_gb"} (peak_rss_gb: the largest peak of our two arms).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = ("trainer-full", "ours-full", "trainer-freeze", "ours-freeze")
FROZEN_LAYERS = 4


def prepare(workdir: Path, rows: int | None) -> None:
    """A project folder with the prepared sample split and the base model (the pipeline's own stages)."""
    import shutil

    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "params.yaml", workdir / "params.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for stage in ("prepare", "download"):
        cmd = [sys.executable, "-m", f"tasks.{stage}"]
        subprocess.run(cmd, cwd=workdir, env=env, check=True, capture_output=True)
    if rows:  # keep the test and validation splits whole; cut only the training rows
        import pandas as pd

        from tasks.paths import ProjectPaths
        from tasks.prepare import subsample

        path = ProjectPaths.at(workdir).split_file("train")
        subsample(pd.read_parquet(path), rows, 42).to_parquet(path, index=False)


def run_arm(arm: str, workdir: Path, epochs: int, seed: int | None = None) -> dict:
    """Train one arm in this process; returns its figures."""
    import torch

    from tasks.config import load_config
    from tasks.download import load_base_ref
    from tasks.inference import encode, padding_id, predict_logits
    from tasks.paths import ProjectPaths
    from tasks.prepare import read_split
    from tasks.train import fine_tune, seed_everything

    paths = ProjectPaths.at(workdir)
    cfg = load_config(paths.params)
    base = load_base_ref(paths).path
    labels = cfg.data.labels
    train, val, test = (read_split(paths, s) for s in ("train", "validation", "test"))
    t = cfg.train.model_copy(update={"epochs": epochs, "checkpoint_every_steps": 0})
    if seed is not None:
        t = t.model_copy(update={"seed": seed})
    torch.set_num_threads(t.num_threads or os.cpu_count() or 1)

    if arm.startswith("ours"):
        if arm == "ours-full":
            t = t.model_copy(update={"strategy": "full", "layer_lr_decay": 1.0})
        else:
            t = t.model_copy(
                update={"strategy": "freeze", "freeze_layers": FROZEN_LAYERS, "cache_frozen": True}
            )
        started = time.perf_counter()
        model, tokenizer, result = fine_tune(base, train, val, labels, t, progress=False)
        seconds = time.perf_counter() - started
        precision = result.precision
    else:
        seconds, model, tokenizer = _trainer(base, train, labels, t, freeze=arm == "trainer-freeze")
        precision = "fp32"
    seed_everything(0)
    encoded = encode(tokenizer, test["text"].tolist(), t.max_length)
    logits = predict_logits(model, encoded, padding_id(tokenizer), 128, torch.device("cpu"), precision)
    truth = torch.tensor([labels.index(v) for v in test["label"]])
    accuracy = float((logits.argmax(-1) == truth).float().mean())
    return {
        "arm": arm,
        "train_rows": len(train),
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "samples_per_s": round(len(train) * epochs / seconds, 1),
        "test_accuracy": round(accuracy, 4),
        "precision": precision,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
    }


def _trainer(base: Path, train, labels: list[str], t, freeze: bool):
    """A plain `Trainer` fine-tune: its defaults, our hyperparameters. Returns (seconds, model, tokenizer)."""
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={x: i for i, x in enumerate(labels)},
    )
    if freeze:
        for module in [model.bert.embeddings, *model.bert.encoder.layer[:FROZEN_LAYERS]]:
            for p in module.parameters():
                p.requires_grad = False
    data = Dataset.from_dict(
        {"text": train["text"].tolist(), "label": [labels.index(v) for v in train["label"]]}
    ).map(lambda b: tokenizer(b["text"], truncation=True, max_length=t.max_length), batched=True)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-trainer-"),
        per_device_train_batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the steps
        num_train_epochs=t.epochs,
        seed=t.seed,
        save_strategy="no",
        report_to=[],
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer)
    )
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started, trainer.model, tokenizer


def bench_args(doc: str | None, arms: tuple[str, ...]) -> argparse.Namespace:
    """The options of a benchmark whose arms each train in their own process; sets the runtime up offline."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=0, help="training rows (0 = the whole training split)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--arms", default=",".join(arms), help="comma-separated subset of " + ", ".join(arms))
    parser.add_argument("--workdir", type=Path, help="reuse a prepared folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, help="train.seed for every arm (default: params.yaml's)")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm, print its JSON
    args = parser.parse_args()

    from tasks.runtime import configure_environment

    configure_environment()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return args


def run_arms(script: str, arms: list[str], args: argparse.Namespace) -> Iterator[tuple[str, dict]]:
    """Each arm as `script --arm NAME` in its own process, on one prepared folder: (arm, its JSON figures)."""
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"bench-{Path(script).stem}-"))
    if not (workdir / "data" / "prepared" / "train.parquet").exists():
        print(f"preparing the sample split and base model in {workdir} ...", flush=True)
        prepare(workdir, args.rows or None)
    for arm in arms:
        print(f"running {arm} ...", flush=True)
        cmd = [sys.executable, script, "--arm", arm, "--workdir", str(workdir), "--epochs", str(args.epochs)]
        if args.seed is not None:
            cmd += ["--seed", str(args.seed)]
        done = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        if done.returncode != 0:
            sys.exit(f"{arm} failed:\n{done.stderr[-3000:]}")
        yield arm, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args = bench_args(__doc__, ARMS)
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.workdir, args.epochs, args.seed)))
        return

    results = {}
    for arm, r in run_arms(__file__, args.arms.split(","), args):
        results[arm] = r
        print(
            f"  {arm:<15} {r['train_seconds']:>8.1f} s  {r['samples_per_s']:>7.1f} samples/s  "
            f"test acc {r['test_accuracy']:.4f}  peak RSS {r['peak_rss_gb']:.2f} GB  ({r['precision']})",
            flush=True,
        )

    def ratio(base: str, ours: str) -> float | None:
        if base in results and ours in results:
            return round(results[base]["train_seconds"] / results[ours]["train_seconds"], 2)
        return None

    def delta(base: str, ours: str) -> float | None:
        if base in results and ours in results:
            return round(results[ours]["test_accuracy"] - results[base]["test_accuracy"], 4)
        return None

    figures = {
        "full_speedup": ratio("trainer-full", "ours-full"),
        "full_accuracy_delta": delta("trainer-full", "ours-full"),
        "cached_freeze_speedup": ratio("trainer-freeze", "ours-freeze"),
        "cached_freeze_accuracy_delta": delta("trainer-freeze", "ours-freeze"),
        "peak_rss_gb": max(
            (results[a]["peak_rss_gb"] for a in results if a.startswith("ours")), default=None
        ),
    }
    print("\ngoals: full_speedup >= 2.5 with |accuracy delta| <= 0.005; cached_freeze_speedup >= 4 with")
    print("|accuracy delta| <= 0.01; peak_rss_gb <= 2.5")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
