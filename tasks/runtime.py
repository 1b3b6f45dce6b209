"""Process-wide settings applied at the entry points (CLI, DVC stage commands, tests), never at import."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

# Offline-safe defaults; a user's own environment always wins.
_ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # telemetry fails (slowly) without internet
    "PREFECT_LOGGING_EXTRA_LOGGERS": "transferline",  # core functions' logs reach the Prefect UI
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # DVC stage commands run the cores outside flows
    # The temporary server migrates a fresh Prefect home's database before it answers, which on a small,
    # busy machine outlasts Prefect's 20 s default (tests/reliability/test_row16_busy_host.py). Waiting
    # longer costs nothing when it starts fast; a server that never comes up still fails.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",  # `dvc init` would otherwise spawn an analytics daemon that cannot connect
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DISABLE_MLFLOW_INTEGRATION": "TRUE",  # transformers must not open MLflow runs of its own
    "TOKENIZERS_PARALLELISM": "false",  # avoid fork warnings from the Rust tokenizer
    "GIT_PYTHON_REFRESH": "quiet",
}


def configure_environment() -> None:
    """Apply the defaults above; call it before Prefect is imported, which reads its settings once."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def torch_threads(local_world: int = 1) -> int:
    """Intra-op threads for torch: OMP_NUM_THREADS when the user set it (a shared box, parallel test
    workers), else one per core shared among the `local_world` processes of this machine (torchrun)."""
    wanted = os.environ.get("OMP_NUM_THREADS", "")
    if wanted.isdigit() and int(wanted) > 0:
        return int(wanted)
    return max(1, (os.cpu_count() or 1) // max(1, local_world))


def stage_logging() -> None:
    """Progress lines of a `python -m tasks.<stage>` run (dvc repro) on stderr.

    Importing Prefect has already given the root logger a WARNING-level handler, so basicConfig would do
    nothing; the project's own logger gets its own handler instead.
    """
    logger = logging.getLogger("transferline")
    # Prefect may have given it an API handler already (PREFECT_LOGGING_EXTRA_LOGGERS): add the console.
    if not any(getattr(h, "_transferline_console", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._transferline_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def retry_on(*errors: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A Prefect `retry_condition_fn` that retries only these (transient) errors, never a bad input."""

    def should_retry(task: Any, task_run: Any, state: Any) -> bool:
        try:
            state.result()
        except errors:
            return True
        except Exception:
            return False
        return False

    return should_retry
