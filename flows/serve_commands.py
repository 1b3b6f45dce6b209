"""Serving commands of the `transferline` CLI: `serve` (HTTP, follows the champion) and `batch-predict`.

flows/cli.py hosts them: ``add_commands(sub)`` registers the parsers and returns one handler per command
name (each takes the parsed Namespace and returns an Exit code: 0 ok, 2 bad input, 5 registry/model
unavailable). Both read the project's settings with the same --set overrides as `run`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from flows.cli_common import Exit, Handler, error, overrides, settings, settings_options
from tasks.config import Config, ConfigError

if TYPE_CHECKING:
    from tasks.serve import ServeSettings

SERVE_EPILOG = """\
endpoints:
  POST /predict  {"texts": ["a great film", ...]} -> {"model", "version", "predictions": [{"label",
                 "score", "probabilities": {label: p}}]}; header X-Model-Version names the answering version
  GET  /health   200 while a verified model serves ("ok", or "degraded" when a newer champion was
                 refused or the registry is unreadable), 503 before one is loaded
  GET  /version  served version, its weights sha256, what the alias says, any refused version and why,
                 and how many requests shared each inference pass

Concurrent requests share inference passes (dynamic batching): a pass waits at most --batch-window-ms
for more requests (after its first arrived, or after the previous pass ended), then their texts are
scored together, length-sorted, in one call of the evaluation's inference path; each answer holds only
its own texts and names the version that scored them.

The champion's files are checked against the sha256 hashes recorded when it was registered before they are
loaded. When 'champion' moves, the new version loads in the background and replaces the old one between
requests; if it cannot be downloaded, verified or loaded, the old one keeps serving.

environment: MLFLOW_TRACKING_URI (default: sqlite:///<project>/mlflow.db).
"""


def add_commands(sub: argparse._SubParsersAction) -> dict[str, Handler]:
    """Add `serve` and `batch-predict` to the CLI's subparsers; returns their handlers."""
    serve = sub.add_parser(
        "serve",
        help="Serve the registry's champion over HTTP, following the alias as it moves.",
        description="Serve models:/<registry.model_name>@champion over HTTP: POST /predict, GET /health, "
        "GET /version.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[settings_options()],
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    serve.add_argument(
        "--poll-interval", type=float, default=10.0, metavar="SECONDS",
        help="how often the champion alias is read (default: 10)",
    )  # fmt: skip
    serve.add_argument(
        "--retry-refused", type=float, default=300.0, metavar="SECONDS",
        help="wait before trying a refused version again (default: 300)",
    )  # fmt: skip
    serve.add_argument(
        "--max-body-bytes", type=int, default=1_000_000,
        help="larger request bodies get 413 (default: 1000000)",
    )  # fmt: skip
    serve.add_argument(
        "--max-batch", type=int, default=256, help="more texts per request get 413 (default: 256)"
    )
    serve.add_argument(
        "--max-pixels", type=int, default=None, metavar="N",
        help="images declaring more pixels (width x height) get 413 before they are decoded (default: "
        "image.max_pixels of params.yaml)",
    )  # fmt: skip
    serve.add_argument(
        "--batch-window-ms", type=float, default=2.0, metavar="MS",
        help="dynamic batching: how long a request waits for concurrent ones to share its inference pass "
        "(default: 2; 0: share only with requests already waiting)",
    )  # fmt: skip
    serve.add_argument(
        "--batch-requests", type=int, default=32, metavar="N",
        help="dynamic batching: requests per inference pass at most (default: 32; 1: one at a time)",
    )  # fmt: skip

    batch = sub.add_parser(
        "batch-predict",
        help="Score a csv/parquet/jsonl file with the champion (the batch-predict Prefect flow).",
        description="Score every row of a file with the champion; writes predictions with the model "
        "version and the input's sha256, plus a JSON sidecar <output>.json.",
        parents=[settings_options()],
    )
    batch.add_argument("input", type=Path, help="file to score: .csv, .parquet or .jsonl")
    batch.add_argument("--output", type=Path, help="predictions file (default: <input>.predictions.<ext>)")
    batch.add_argument("--text-column", default="text", help="column holding the texts (default: text)")
    return {"serve": cmd_serve, "batch-predict": cmd_batch_predict}


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")


def serve_settings(args: argparse.Namespace, cfg: Config) -> ServeSettings:
    """The server's settings from `serve`'s options (--max-pixels defaults to the project's
    image.max_pixels); ConfigError naming the option when one is out of range."""
    from tasks.serve import ServeSettings

    max_pixels = cfg.image.max_pixels if args.max_pixels is None else args.max_pixels
    for name in ("poll_interval", "retry_refused", "max_body_bytes", "max_batch", "batch_requests"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    _positive("--max-pixels", max_pixels)
    if not 0 <= args.batch_window_ms <= 1000:
        raise ConfigError(f"--batch-window-ms must be 0..1000, got {args.batch_window_ms}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")
    return ServeSettings(
        host=args.host,
        port=args.port,
        poll_s=args.poll_interval,
        retry_refused_s=args.retry_refused,
        max_body_bytes=args.max_body_bytes,
        max_batch=args.max_batch,
        batch_size=cfg.evaluate.batch_size,  # the batch the offline evaluation scored with
        batch_window_s=args.batch_window_ms / 1000,
        batch_requests=args.batch_requests,
        max_pixels=max_pixels,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from tasks.registry import Registry
    from tasks.serve import build_watcher, run_server

    try:
        paths, cfg = settings(args)
        serving = serve_settings(args, cfg)
    except ConfigError as err:
        return error(err, Exit.BAD_INPUT)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a log, not a terminal
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = Registry.for_project(paths)
    watcher = build_watcher(
        registry, cfg.registry.model_name, paths.serving_cache, serving, cfg.train.max_length
    )

    def ready() -> None:
        print(
            f"transferline serve: {cfg.registry.model_name}@champion "
            f"({'v' + watcher.current.version if watcher.current else 'not loaded yet'}) on "
            f"http://{serving.host}:{serving.port}  (registry {registry.tracking_uri}; alias read every "
            f"{serving.poll_s:g} s)",
            flush=True,
        )

    run_server(watcher, serving, ready)
    return Exit.OK


def cmd_batch_predict(args: argparse.Namespace) -> int:
    from flows.cli import _quiet_prefect_shutdown
    from tasks.kinds.scoring_input import ScoringInputError, file_format
    from tasks.registry import RegistryError
    from tasks.scoring import default_output
    from tasks.serve import VerificationError

    try:
        paths, _ = settings(args)
        if not args.input.is_dir():  # a folder of images is scored as it is
            file_format(args.input)  # an unknown format is refused before a flow run starts
        file_format(args.output or default_output(args.input))
    except (ConfigError, ScoringInputError) as err:
        return error(err, Exit.BAD_INPUT)
    _quiet_prefect_shutdown()
    from flows.batch_predict import batch_predict

    try:
        summary = batch_predict(
            input_path=str(args.input.resolve()),
            output_path=str(args.output.resolve()) if args.output else None,
            text_column=args.text_column,
            project_dir=str(paths.root),
            overrides=overrides(args) or None,
        )
    except (ScoringInputError, ConfigError) as err:
        return error(err, Exit.BAD_INPUT)
    except (RegistryError, VerificationError) as err:
        return error(err, Exit.BACKEND)
    print(
        f"scored {summary.rows} rows with {summary.model} v{summary.version} -> {summary.output}\n"
        f"  sidecar: {summary.sidecar}  (input sha256 {summary.input_sha256[:16]}…)"
    )
    return Exit.OK
