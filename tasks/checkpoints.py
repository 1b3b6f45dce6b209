"""Training checkpoints that survive a kill at any instant.

A checkpoint is written into a temporary folder, its files are fsynced, a completeness marker holding each
file's sha256 is written last, and only then is the folder renamed to ``step-<n>``. On restart the newest
folder whose marker verifies is used; a half-written or corrupted one is skipped (and reported), never
loaded. Tensors are stored as safetensors: loading a checkpoint never unpickles anything.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks import faults
from tasks.prepare import file_sha256

if TYPE_CHECKING:
    import torch

log = logging.getLogger("transferline.checkpoints")

MARKER = "COMPLETE.json"
STATE_FILE = "state.json"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    tensors: dict[str, dict[str, torch.Tensor]]  # group name (e.g. "weights", "optimizer") -> tensors
    state: dict[str, Any]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(
    root: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint `step` atomically under `root`; keep the newest `keep` complete ones."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:09d}"
    tmp = root / f"{TMP_PREFIX}{PREFIX}{step:09d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for group, group_tensors in tensors.items():
        # safetensors refuses shared or non-contiguous storage; a checkpoint owns plain copies.
        plain = {k: v.detach().contiguous().cpu() for k, v in group_tensors.items()}
        save_file(plain, tmp / f"{group}.safetensors")
    (tmp / STATE_FILE).write_text(json.dumps(state, sort_keys=True))
    faults.point("train.checkpoint-partial")  # files written, no marker yet: must never be loaded
    files = {}
    for path in sorted(tmp.iterdir()):
        _fsync(path)
        files[path.name] = file_sha256(path)
    marker = tmp / MARKER
    marker.write_text(json.dumps({"step": step, "files": files}, sort_keys=True))
    _fsync(marker)
    _fsync(tmp)
    if final.exists():  # a resumed run re-reaching a step it had saved before it was killed
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    faults.point("train.checkpoint-written")
    _prune(root, keep)
    return final


def verify(folder: Path) -> str | None:
    """None when the checkpoint is complete and intact, else why it is not."""
    marker = folder / MARKER
    if not marker.is_file():
        return "no completeness marker (written partially)"
    try:
        listed = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return "unreadable completeness marker"
    for name, expected in listed.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != expected:
            return f"{name} does not match its recorded sha256"
    return None


def _step(folder: Path) -> int:
    return int(folder.name.removeprefix(PREFIX))


def _complete_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(folders, key=_step, reverse=True)


def latest(root: Path) -> Checkpoint | None:
    """The newest checkpoint under `root` that verifies; damaged newer ones are reported and skipped."""
    from safetensors.torch import load_file

    for folder in _complete_folders(root):
        problem = verify(folder)
        if problem:
            log.warning("skipping checkpoint %s: %s", folder.name, problem)
            continue
        tensors = {p.stem: load_file(p) for p in sorted(folder.glob("*.safetensors"))}
        state = json.loads((folder / STATE_FILE).read_text())
        return Checkpoint(folder, _step(folder), tensors, state)
    return None


def _prune(root: Path, keep: int) -> None:
    for folder in root.iterdir():
        if folder.name.startswith(TMP_PREFIX) and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)  # left by a process killed mid-write
    # Marked folders are complete (the marker is written last); hashes are checked when one is loaded.
    marked = [f for f in _complete_folders(root) if (f / MARKER).is_file()]
    for folder in marked[keep:]:
        shutil.rmtree(folder, ignore_errors=True)


def clear(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


# -- a training run's state ----------------------------------------------------------------------------


def save_training(
    root: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: dict[str, Any],
    best: dict[str, torch.Tensor] | None,
) -> Path:
    """Checkpoint `step` of a run: what a restarted run needs to continue as if it had never stopped.

    Args:
        weights: what training changes, by name: the parameters that adapt and BatchNorm running statistics
            (the rest is the base model's and never changes).
        scheduler: a LambdaLR; its lambdas are code, rebuilt by the run, so they are not saved.
        progress: where the loop is (epoch, step, the python RNG state of the epoch, ...), JSON-able.
        best: the weights of the best epoch so far, when it is not the current one.
    """
    import torch

    tensors = {"weights": dict(weights), "optimizer": {}, "rng": {"torch": torch.get_rng_state()}}
    opt = optimizer.state_dict()
    for index, param_state in opt["state"].items():
        for key, value in param_state.items():
            tensors["optimizer"][f"{index}.{key}"] = value
    if best is not None:
        tensors["best"] = best
    meta = {
        "progress": progress,
        "optimizer_groups": opt["param_groups"],
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
    }
    return write(root, step, tensors, meta)


def restore_training(
    ckpt: Checkpoint, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Load a save_training checkpoint into the run's weights, optimizer, scheduler and torch RNG.

    Returns:
        (the progress it was saved with, the best epoch's weights or None).
    """
    import torch

    with torch.no_grad():
        for name, value in ckpt.tensors["weights"].items():
            weights[name].copy_(value)
    opt_state: dict[str, Any] = {"state": {}, "param_groups": ckpt.state["optimizer_groups"]}
    for key, value in ckpt.tensors["optimizer"].items():
        index, name = key.split(".", 1)
        opt_state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict({**ckpt.state["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    torch.set_rng_state(ckpt.tensors["rng"]["torch"])
    return ckpt.state["progress"], ckpt.tensors.get("best")
