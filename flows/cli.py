"""The `transferline` command: run a retraining, inspect the registry, list the parameters."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from flows.data_commands import add_commands as add_data_commands
from flows.experiment_commands import add_commands as add_experiment_commands
from flows.ops_commands import add_commands as add_ops_commands
from flows.registry_commands import add_commands
from flows.serve_commands import add_commands as add_serve_commands
from tasks.config import ConfigError, describe_params, load_config, parse_overrides
from tasks.paths import ProjectPaths
from tasks.runtime import configure_environment

# Exit codes, so schedulers and scripts can tell outcomes apart.
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INVALID_DATA, EXIT_NOT_PROMOTED, EXIT_BACKEND = 0, 1, 2, 3, 4, 5

RUN_EPILOG = """\
examples:
  transferline run                                   # full retraining on params.yaml
  transferline run --set train.epochs=1 --set data.max_rows=2000   # a quick run
  transferline run --set data.source=data/raw/reviews.csv --set data.text_column=review
  transferline run --set model.source=hf://distilbert/distilbert-base-uncased@main

what happens: prepare -> validate (Great Expectations) -> download model -> drift -> fine-tune -> evaluate
(challenger and current champion on the same test rows) -> gate -> dvc commit + push -> register the
version in MLflow as 'challenger' -> move 'champion' to it if the gate passed.

exit codes: 0 promoted, 2 bad parameters or source, 3 data failed validation or drift, 4 trained and
registered but not promoted (gate failed or approval refused), 5 registry or DVC unavailable, 1 other.

environment: MLFLOW_TRACKING_URI (default: sqlite:///<project>/mlflow.db), PREFECT_API_URL (default:
a temporary local Prefect server for the run).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferline",
        description="Fine-tune a pretrained model on labelled text, gate it against the current champion, "
        "and promote it in the MLflow registry. Every setting is in params.yaml.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, **kw: object) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, **kw)  # type: ignore[arg-type]
        p.add_argument("--project", type=Path, default=Path("."), help="project folder (default: current)")
        return p

    run = add(
        "run",
        "Run one full retraining (the Prefect flow).",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params.yaml key for this run (repeatable); see `transferline params`",
    )
    status = add("status", "Show the registered model: versions, champion/challenger, metrics, lineage.")
    status.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    add("params", "List every parameter of params.yaml with its value and meaning.")
    approve = sub.add_parser(
        "approve",
        help="Approve (or --reject) a retraining run that waits for promotion approval.",
        description="Resume a flow run paused by promote.require_approval. Needs PREFECT_API_URL (the "
        "server the run uses). The Prefect UI offers the same form on the paused run.",
    )
    approve.add_argument("flow_run_id", help="the paused flow run's id (printed by the run, shown in the UI)")
    approve.add_argument("--reject", action="store_true", help="reject instead of approving")
    approve.add_argument("--comment", default="", help="recorded with the decision in the alias ledger")
    parser.set_defaults(
        _extra_handlers={
            **add_commands(sub),
            **add_data_commands(sub),
            **add_experiment_commands(sub),
            **add_ops_commands(sub),
            **add_serve_commands(sub),
        }
    )
    return parser


def _quiet_prefect_shutdown() -> None:
    # The ephemeral server can log "Error flushing events" tracebacks while it shuts down after the run
    # (a known harmless Prefect 3.8 race); the run itself is recorded. Keep the user's terminal clean.
    for name in ("prefect.server.services.task_run_recorder", "prefect.server.events", "prefect._internal"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def cmd_run(args: argparse.Namespace) -> int:
    from tasks.download import ModelSourceError, TransientDownloadError
    from tasks.gate import GateRejected
    from tasks.prepare import DataSourceError
    from tasks.registry import RegistryError
    from tasks.reports import ReportedStop
    from tasks.versioning import VersioningError

    paths = ProjectPaths.at(args.project)
    try:  # refuse bad parameters before any work (no server, no data read)
        overrides = parse_overrides(args.overrides)
        cfg = load_config(paths.params, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if cfg.promote.require_approval and not os.environ.get("PREFECT_API_URL"):
        print(
            "error: promote.require_approval needs a Prefect server that outlives this process, so that "
            "someone can approve: start one with `prefect server start` and set PREFECT_API_URL "
            "(e.g. http://127.0.0.1:4200/api)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or paths.default_tracking_uri
    print(
        f"transferline: retraining {cfg.registry.model_name!r} from {cfg.model.source} on {cfg.data.source}\n"
        f"  MLflow: {tracking}\n  Prefect: {os.environ.get('PREFECT_API_URL') or 'temporary local server'}",
        flush=True,
    )
    _quiet_prefect_shutdown()
    from flows.retrain import retrain

    started = time.perf_counter()
    try:
        summary = retrain(project_dir=str(paths.root), overrides=overrides or None)
    except ConfigError as err:
        return _fail(err, EXIT_BAD_INPUT)
    except (DataSourceError, ModelSourceError) as err:
        return _fail(err, EXIT_BAD_INPUT)
    except ReportedStop as err:  # data failed validation or drift blocked
        return _fail(err, EXIT_INVALID_DATA, "nothing was trained or registered")
    except GateRejected as err:
        print(f"\nnot promoted: {err}\nsee reports/gate.md", file=sys.stderr)
        return EXIT_NOT_PROMOTED
    except (RegistryError, VersioningError, TransientDownloadError) as err:
        return _fail(err, EXIT_BACKEND)
    minutes = (time.perf_counter() - started) / 60
    if summary.version == summary.champion_version:
        print(
            f"\n{summary.model_name} v{summary.version} was already 'champion': this run reproduced it "
            f"exactly (same data, parameters, base model and weights), so no new version was registered "
            f"({minutes:.1f} min)."
        )
        return EXIT_OK
    print(
        f"\n{summary.model_name} v{summary.version} is now 'champion' (test accuracy "
        f"{summary.test_accuracy:.4f}; compared with "
        f"{'v' + summary.champion_version if summary.champion_version else 'no previous champion'}) "
        f"in {minutes:.1f} min.\n"
        f"  reports:  {paths.rel(paths.validation_dir)}/data_docs/index.html, "
        f"{paths.rel(paths.gate_report)}, {paths.rel(paths.evaluation_dir)}/\n"
        f"  registry: transferline status   |   mlflow ui --backend-store-uri {tracking}\n"
        f"  load it:  mlflow.pyfunc.load_model('models:/{summary.model_name}@champion')"
    )
    return EXIT_OK


def _fail(err: Exception, code: int, consequence: str = "") -> int:
    tail = f"\n({consequence})" if consequence else ""
    print(f"\nerror: {err}{tail}", file=sys.stderr)
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from tasks.registry import Registry, RegistryError

    paths = ProjectPaths.at(args.project)
    try:
        cfg = load_config(paths.params)
        status = Registry.for_project(paths).status(cfg.registry.model_name)
    except (ConfigError, RegistryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(err, ConfigError) else EXIT_BACKEND
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    print(f"model {status['model']}  ({status.get('tracking_uri', '')})")
    for alias in ("champion", "challenger", "previous"):
        held = status.get(alias)
        print(f"  {alias:<10} {'v' + held['version'] if held else '—'}")
    if not status["versions"]:
        print("  no versions yet: run `transferline run`")
        return EXIT_OK
    print(f"\n  {'version':<8} {'aliases':<22} {'test_acc':<9} {'gate':<7} {'data (DVC md5)':<20} base model")
    for v in status["versions"]:
        tags = v.get("tags", {})
        acc = v.get("metrics", {}).get("test_accuracy")
        print(
            f"  {v['version']:<8} {','.join(v.get('aliases', [])) or '-':<22} "
            f"{f'{acc:.4f}' if acc is not None else '-':<9} {tags.get('gate', '-'):<7} "
            f"{tags.get('data_hash', '-')[:18]:<20} {tags.get('base_model_id', '-')} "
            f"({tags.get('base_model_sha256', '')[:12]})"
        )
    return EXIT_OK


def cmd_approve(args: argparse.Namespace) -> int:
    from uuid import UUID

    from tasks.registry import default_actor

    if not os.environ.get("PREFECT_API_URL"):
        print("error: set PREFECT_API_URL to the Prefect server the paused run uses", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        run_id = UUID(args.flow_run_id)
    except ValueError:
        print(f"error: {args.flow_run_id!r} is not a flow run id", file=sys.stderr)
        return EXIT_BAD_INPUT
    from prefect.flow_runs import resume_flow_run

    decision = {
        "approve": not args.reject,
        "comment": args.comment,
        "approver": default_actor(),
    }
    try:
        resume_flow_run(run_id, run_input=decision)
    except Exception as err:  # not paused, unknown id, server down: say which
        print(f"error: could not resume flow run {run_id}: {err}", file=sys.stderr)
        return EXIT_BACKEND
    print(f"{'rejected' if args.reject else 'approved'}: flow run {run_id} resumes")
    return EXIT_OK


def cmd_params(args: argparse.Namespace) -> int:
    paths = ProjectPaths.at(args.project)
    rows = describe_params(paths.params)
    width = max(len(k) for k, _, _ in rows)
    for key, value, comment in rows:
        print(f"{key:<{width}}  {value:<28}  {comment}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> None:
    configure_environment()
    logging.getLogger("transferline").setLevel(logging.INFO)  # stage progress reaches Prefect's console
    args = _parser().parse_args(argv)
    handlers = {"run": cmd_run, "status": cmd_status, "params": cmd_params, "approve": cmd_approve}
    handlers.update(args._extra_handlers)
    raise SystemExit(handlers[args.command](args))


if __name__ == "__main__":
    main()
