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

``--task image``: the image example's model (EfficientNet-Lite0) and settings (examples/image-classification
params.yaml: freeze with its fixed layers, learning rate, batch size, one torch thread) on a stratified
Fashion-MNIST subset prepared by the pipeline's own stages, against a plain torch loop over the same model,
data, preprocessing and hyperparameters (AdamW, the same warm-up and decay), which decodes every batch and
runs every layer each step (no activation cache):

- plain-freeze / ours-freeze: the stem and the lowest train.freeze_layers layers fixed (ours caches them)
- plain-full / ours-full:     every weight trains

    python bench/training.py --task image           # 1,500 images at 64 pixels, 3 epochs
    python bench/training.py --task image --quick   # smoke test: 300 images at 32 pixels, 1 epoch

Last line: the same keys, with "task": "image" (peak_rss_gb: the largest peak of our two arms).
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
IMAGE_ARMS = ("plain-freeze", "ours-freeze", "plain-full", "ours-full")
IMAGE_PARAMS = ROOT / "examples" / "image-classification" / "params.yaml"
# The image subset: Fashion-MNIST images kept before splitting (data.max_rows), input side, epochs.
IMAGE_FULL = {"rows": 1500, "size": 64, "epochs": 3}
IMAGE_QUICK = {"rows": 300, "size": 32, "epochs": 1}  # a smoke test of the arms, not a measurement
BASELINES = {"text": ("trainer-full", "trainer-freeze"), "image": ("plain-full", "plain-freeze")}


def _row(arm: str, rows: int, epochs: int, seconds: float, accuracy: float, precision: str) -> dict:
    """One arm's line of the table (text and image arms alike)."""
    return {
        "arm": arm,
        "train_rows": rows,
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "samples_per_s": round(rows * epochs / seconds, 1),
        "test_accuracy": round(accuracy, 4),
        "precision": precision,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
    }


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

        from tasks.kinds.text_sources import subsample_texts
        from tasks.paths import ProjectPaths

        path = ProjectPaths.at(workdir).split_file("train")
        subsample_texts(pd.read_parquet(path), rows, 42).to_parquet(path, index=False)


def prepare_image(workdir: Path, rows: int, size: int) -> None:
    """A project folder with the image example's params (a `rows`-image subset at `size` pixels), the
    prepared snapshot and the converted base model, made by the pipeline's own stages."""
    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load(IMAGE_PARAMS.read_text())
    params["data"]["max_rows"] = rows
    params["image"]["size"] = size
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for stage in ("prepare", "download"):
        cmd = [sys.executable, "-m", f"tasks.{stage}"]
        done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{stage} failed in {workdir}:\n{(done.stdout + done.stderr)[-3000:]}")


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
    return _row(arm, len(train), epochs, seconds, accuracy, precision)


def run_image_arm(arm: str, workdir: Path, epochs: int, seed: int | None = None) -> dict:
    """Train one image arm in this process; returns its figures."""
    import torch

    from tasks.config import load_config
    from tasks.download import load_base_ref
    from tasks.inference import predict_inputs
    from tasks.kinds import task_of
    from tasks.paths import ProjectPaths
    from tasks.prepare import read_split
    from tasks.train import fine_tune

    paths = ProjectPaths.at(workdir)
    cfg = load_config(paths.params)
    kind, base, labels = task_of(cfg), load_base_ref(paths).path, cfg.data.labels
    snapshot = paths.prepared_dir
    train, val, test = (read_split(paths, s) for s in ("train", "validation", "test"))
    t = cfg.train.model_copy(update={"epochs": epochs, "checkpoint_every_steps": 0})
    if seed is not None:
        t = t.model_copy(update={"seed": seed})
    torch.set_num_threads(t.num_threads or os.cpu_count() or 1)
    freeze = arm.endswith("freeze")
    if arm.startswith("ours"):
        change = {"strategy": "freeze", "cache_frozen": True} if freeze else {"strategy": "full"}
        t = t.model_copy(update={**change, "layer_lr_decay": 1.0})
        started = time.perf_counter()
        model, prep, result = fine_tune(base, train, val, labels, t, False, kind=kind, snapshot=snapshot)
        seconds, precision = time.perf_counter() - started, result.precision
    else:
        prep = kind.training_preprocessing(base)
        x_train = kind.encode(train, snapshot, labels)
        seconds, model = _plain_image_loop(kind, base, labels, t, (x_train, prep), freeze)
        precision = "fp32"
    x_test = kind.encode(test, snapshot, labels)
    logits = predict_inputs(model, x_test, 128, (kind, prep, torch.device("cpu"), precision))
    accuracy = float((logits.argmax(-1) == x_test.labels).float().mean())
    return _row(arm, len(train), epochs, seconds, accuracy, precision)


def _plain_image_loop(kind, base: Path, labels: list[str], t, data, freeze: bool):
    """A plain torch loop: AdamW on what trains, linear warm-up then decay, every batch decoded and run
    through every layer. `data`: (encoded training images, preprocessing). Returns (seconds, model)."""
    import math
    import random

    import torch
    import torch.nn.functional as F

    x_train, prep = data
    torch.manual_seed(t.seed)
    model = kind.build_model(base, labels)
    blocks = kind.blocks(model)
    fixed = [blocks.stem, *blocks.layers[: t.freeze_layers]] if freeze else []
    for module in fixed:
        module.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=t.learning_rate, weight_decay=t.weight_decay)
    steps = math.ceil(len(x_train) / t.batch_size) * t.epochs
    warmup = max(1, int(steps * t.warmup_ratio))

    def factor(step: int) -> float:  # linear warm-up, then linear decay to zero (as tasks/train.py)
        return (step + 1) / warmup if step < warmup else max(0.0, (steps - step) / max(1, steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rng = random.Random(t.seed)
    started = time.perf_counter()
    for _ in range(t.epochs):
        model.train()
        for module in fixed:  # fixed layers keep their BatchNorm statistics, as ours do
            module.eval()
        order = list(range(len(x_train)))
        rng.shuffle(order)
        for start in range(0, len(order), t.batch_size):
            batch = order[start : start + t.batch_size]
            logits = model(**kind.collate(x_train, batch, prep)).logits
            F.cross_entropy(logits, x_train.labels[batch]).backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started, model


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


def bench_args(doc: str | None, arms: tuple[str, ...], tasks: bool = False) -> argparse.Namespace:
    """The options of a benchmark whose arms each train in their own process; sets the runtime up offline.
    `tasks`: the benchmark also takes --task and --quick (this one does)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = ", ".join(arms) + (f" (--task image: {', '.join(IMAGE_ARMS)})" if tasks else "")
    images = f"; --task image: images kept before splitting (default {IMAGE_FULL['rows']:,})" if tasks else ""
    rows_help = f"training rows (0 = the whole training split){images}"
    parser.add_argument("--rows", type=int, default=0, help=rows_help)
    parser.add_argument("--epochs", type=int, default=None, help="passes over the training rows (default: 3)")
    parser.add_argument("--arms", help="comma-separated subset of " + choices)
    parser.add_argument("--workdir", type=Path, help="reuse a prepared folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, help="train.seed for every arm (default: params.yaml's)")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm, print its JSON
    if tasks:
        parser.add_argument("--task", choices=sorted(BASELINES), default="text", help="default: text")
        parser.add_argument("--quick", action="store_true", help="image: a smoke test on a tiny subset")
    args = parser.parse_args()
    if not tasks:
        args.task, args.quick = "text", False
    if args.quick and args.task != "image":
        parser.error("--quick is for --task image")
    subset = (IMAGE_QUICK if args.quick else IMAGE_FULL) if args.task == "image" else {"rows": 0, "epochs": 3}
    args.rows = args.rows or subset["rows"]
    args.epochs = args.epochs or subset["epochs"]
    args.size = subset.get("size")
    args.arms = args.arms or ",".join(IMAGE_ARMS if args.task == "image" else arms)

    from tasks.runtime import configure_environment

    configure_environment()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return args


def run_arms(script: str, arms: list[str], args: argparse.Namespace) -> Iterator[tuple[str, dict]]:
    """Each arm as `script --arm NAME` in its own process, on one prepared folder: (arm, its JSON figures)."""
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"bench-{Path(script).stem}-"))
    if not (workdir / "data" / "prepared" / "train.parquet").exists():
        print(f"preparing the sample split and base model in {workdir} ...", flush=True)
        if args.task == "image":
            prepare_image(workdir, args.rows, args.size)
        else:
            prepare(workdir, args.rows or None)
    for arm in arms:
        print(f"running {arm} ...", flush=True)
        cmd = [sys.executable, script, "--arm", arm, "--workdir", str(workdir), "--epochs", str(args.epochs)]
        if args.seed is not None:
            cmd += ["--seed", str(args.seed)]
        if args.task != "text":
            cmd += ["--task", args.task]
        done = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        if done.returncode != 0:
            sys.exit(f"{arm} failed:\n{done.stderr[-3000:]}")
        yield arm, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args = bench_args(__doc__, ARMS, tasks=True)
    if args.arm:
        arm = run_image_arm if args.task == "image" else run_arm
        print(json.dumps(arm(args.arm, args.workdir, args.epochs, args.seed)))
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

    full, freeze = BASELINES[args.task]
    figures = {
        "full_speedup": ratio(full, "ours-full"),
        "full_accuracy_delta": delta(full, "ours-full"),
        "cached_freeze_speedup": ratio(freeze, "ours-freeze"),
        "cached_freeze_accuracy_delta": delta(freeze, "ours-freeze"),
        "peak_rss_gb": max(
            (results[a]["peak_rss_gb"] for a in results if a.startswith("ours")), default=None
        ),
    }
    if args.task == "text":
        print("\ngoals: full_speedup >= 2.5 with |accuracy delta| <= 0.005; cached_freeze_speedup >= 4 with")
        print("|accuracy delta| <= 0.01; peak_rss_gb <= 2.5")
    else:
        figures = {"task": "image", "train_rows": next(iter(results.values()))["train_rows"], **figures}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
