"""Atomic checkpoints: a checkpoint is used only when its completeness marker verifies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tasks import checkpoints

ROOT = Path(__file__).resolve().parents[2]


def tensors(step: int) -> dict[str, dict[str, torch.Tensor]]:
    return {"weights": {"w": torch.full((4, 4), float(step))}, "rng": {"torch": torch.get_rng_state()}}


def test_newest_intact_checkpoint_is_loaded_and_old_ones_pruned(tmp_path):
    for step in (10, 20, 30):
        checkpoints.write(tmp_path, step, tensors(step), {"step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000020", "step-000000030"]
    ckpt = checkpoints.latest(tmp_path)
    assert ckpt is not None and ckpt.step == 30 and ckpt.state == {"step": 30}
    assert torch.equal(ckpt.tensors["weights"]["w"], torch.full((4, 4), 30.0))


def test_corrupt_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
    for step in (10, 20):
        checkpoints.write(tmp_path, step, tensors(step), {"step": step})
    weights = tmp_path / "step-000000020" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit pattern inside the tensor bytes
    weights.write_bytes(bytes(data))
    ckpt = checkpoints.latest(tmp_path)
    assert ckpt is not None and ckpt.step == 10
    assert (
        "skipping checkpoint step-000000020: weights.safetensors does not match its recorded sha256"
        in caplog.text
    )


def test_process_killed_while_writing_leaves_nothing_loadable(tmp_path):
    """A real abrupt exit after the tensors are written and before the marker: the step is never used."""
    checkpoints.write(tmp_path, 10, tensors(10), {"step": 10})
    script = (
        "import sys, torch; from pathlib import Path; from tasks import checkpoints; "
        "checkpoints.write(Path(sys.argv[1]), 20, {'weights': {'w': torch.zeros(2)}}, {'step': 20})"
    )
    env = {**os.environ, "TRANSFERLINE_FAULT": "train.checkpoint-partial"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, env=env, capture_output=True
    )
    assert done.returncode == 137, done.stderr
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert any(name.startswith(".tmp-step-000000020") for name in leftovers)
    assert checkpoints.latest(tmp_path).step == 10
    # A complete-looking folder without a marker (e.g. copied by hand) is refused as well.
    fake = tmp_path / "step-000000099"
    fake.mkdir()
    (fake / "state.json").write_text(json.dumps({"step": 99}))
    assert checkpoints.verify(fake) == "no completeness marker (written partially)"
    assert checkpoints.latest(tmp_path).step == 10
    # The next write cleans the temporary leftover of the killed writer.
    checkpoints.write(tmp_path, 30, tensors(30), {"step": 30})
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
