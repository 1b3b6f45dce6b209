"""A racer: one process standing in for one machine, in its own project checkout.

Started as ``python -m tests.reliability.racer NAME`` with the checkout as working directory (so `tasks`
is the checkout's own copy) and the scale-out environment (MLFLOW_TRACKING_URI, PREFECT_API_URL). It reads
one JSON command per line on stdin and answers one JSON line on stdout:

- ``{"op": "promote", "version", "expected", "at", "reason", "model"?}``: Registry.promote, as the flow's
  promote step calls it, at wall-clock time ``at`` (both racers get the same instant);
- ``{"op": "rollback", "to", "expected", "at", "reason", "model"?}``: Registry.rollback with the champion
  it expects, as `transferline rollback --to V --expect-champion E` calls it;
- ``{"op": "status"}``: what `transferline status --json` prints in the checkout.

Answers: ``{"outcome": "won"|"conflict"|"error", "message", "actor", "seconds"}``. The model is the
checkout's registry.model_name unless the command names another.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(name: str) -> None:
    from tasks.runtime import configure_environment

    configure_environment()
    from tasks import alias_lock
    from tasks.config import load_config
    from tasks.paths import ProjectPaths
    from tasks.registry import CHAMPION, PromotionConflict, Registry

    paths = ProjectPaths.at(Path.cwd())
    default_model = load_config(paths.params).registry.model_name
    registry = Registry.for_project(paths)
    actor = f"{name}@{paths.root.name}"
    registry.get_alias(default_model, CHAMPION)  # warm up: imports, client, connection
    uri = registry.tracking_uri
    with alias_lock.hold(alias_lock.service_for(uri, default_model), uri, actor):
        pass  # ... and the lock service (the Prefect limit is created on first use)
    answer({"outcome": "ready", "actor": actor})
    for line in sys.stdin:
        cmd = json.loads(line)
        model = cmd.get("model", default_model)
        if cmd["op"] == "status":
            answer({"outcome": "status", **status(paths)})
            continue
        time.sleep(max(0.0, cmd["at"] - time.time()))
        started = time.perf_counter()
        try:
            if cmd["op"] == "promote":
                registry.promote(model, cmd["version"], cmd["expected"], actor=actor, reason=cmd["reason"])
            else:
                registry.rollback(
                    model, cmd["to"], reason=cmd["reason"], actor=actor, expected_champion=cmd["expected"]
                )
            outcome, message = "won", ""
        except PromotionConflict as err:
            outcome, message = "conflict", str(err)
        except Exception as err:  # reported, so the test fails with the cause instead of hanging
            outcome, message = "error", f"{type(err).__name__}: {err}"
        answer(
            {"outcome": outcome, "message": message, "actor": actor, "seconds": time.perf_counter() - started}
        )


def status(paths: object) -> dict:
    """What `transferline status --json` prints in this checkout, and its exit code."""
    import contextlib
    import io

    from flows.cli import main as cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli(["status", "--json", "--project", str(paths.root)])  # type: ignore[attr-defined]
    return json.loads(out.getvalue())


def answer(payload: dict) -> None:
    print(json.dumps(payload), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
