"""The evidence command's record of the arms it has finished, so that a stopped run resumes where it stopped.

`transferline experiment` takes hours on a CPU, and it writes its tables only at the end. Each finished
arm is added to `<output>/.progress.json` at once (written to a temporary file, then renamed); the next
run of the command with the same settings takes the arms recorded there instead of training them again,
and deletes the file when it has written the tables. A record made with other settings (overrides,
grids, data, base model) is set aside, never mixed in.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from tasks.experiment import ArmResult

logger = logging.getLogger("transferline.experiment")

PROGRESS_FILE = ".progress.json"


def progress_file(out: Path) -> Path:
    return out / PROGRESS_FILE


def finished_arms(out: Path, settings: dict[str, Any]) -> dict[str, ArmResult]:
    """The arms an earlier run with these `settings` finished, by name; {} when there is none."""
    path = progress_file(out)
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
        arms = [ArmResult.from_dict(a) for a in record["arms"]]
    except (ValueError, KeyError, TypeError) as err:
        logger.warning("%s is unreadable (%s): every arm is trained again", path, err)
        return {}
    if record.get("settings") != _plain(settings):
        logger.info("%s was recorded with other settings: every arm is trained again", path)
        return {}
    logger.info(
        "resuming: %d arm(s) finished by an earlier run are taken from %s: %s",
        len(arms),
        path,
        ", ".join(a.name for a in arms),
    )
    return {a.name: a for a in arms}


def record_arm(out: Path, settings: dict[str, Any], done: list[ArmResult]) -> None:
    """Write every finished arm so far, atomically: a crash leaves the previous record or this one."""
    out.mkdir(parents=True, exist_ok=True)
    path = progress_file(out)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"settings": _plain(settings), "arms": [a.to_dict() for a in done]}, indent=2))
    os.replace(tmp, path)


def clear(out: Path) -> None:
    """The tables are written: the record has served."""
    progress_file(out).unlink(missing_ok=True)


def _plain(settings: dict[str, Any]) -> Any:
    """`settings` as JSON reads it back (tuples as lists), so a record compares equal to its settings."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))
