"""Training checkpoints that survive a kill at any instant.

A checkpoint is written into a temporary folder, its files are fsynced, a completeness marker holding each
file's sha256 is written last, and only then is the folder renamed to ``step-<n>``. On restart the newest
folder whose marker verifies is used; a half-written or corrupted one is skipped (and reported), never
loaded. Tensors are stored as safetensors: loading a checkpoint never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks import faults

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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        files[path.name] = _sha256(path)
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
        if _sha256(path) != expected:
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
