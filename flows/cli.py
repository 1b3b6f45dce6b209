"""The `transferline` command: run a retraining, inspect the registry, list the parameters."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from flows.cli_common import Exit, Handler, error, follow_up, overrides, settings, settings_options, table
from flows.data_commands import add_commands as add_data_commands
from flows.experiment_commands import add_commands as add_experiment_commands
from flows.ops_commands import add_commands as add_ops_commands
from flows.registry_commands import add_commands as add_registry_commands
from flows.serve_commands import add_commands as add_serve_commands
from tasks.config import Config, ConfigError, describe_params
from tasks.paths import ProjectPaths
from tasks.registry import ALIASES, CHAMPION
from tasks.runtime import configure_environment

# What `status`, `registry show` and `lineage` read of the settings: the --set items they need.
REGISTRY_SECTIONS = ("registry",)

RUN_EPILOG = """\
examples:
  transferline run                                   # full retraining on params.yaml
  transferline run --set train.epochs=1 --set data.max_rows=2000   # a quick run
  transferline run --set data.source=data/raw/reviews.csv --set data.text_column=review
  transferline run --set model.source=hf://distilbert/distilbert-base-uncased@main

what happens: prepare -> validate (Great Expectations) -> download model -> drift -> fine-tune -> evaluate
(challenger and current champion on the same test rows) -> gate -> dvc commit + push -> register the
version in MLflow as 'challenger' -> move 'champion' to it if the gate passed.

exit codes: 0 promoted, 2 bad parameters or source, or another run holds the project folder (it
is named; ops.run_lock_wait_s: how long to wait for it), 3 data failed validation or drift, 4 trained and
registered but not promoted (gate failed or approval refused), 5 registry or DVC unavailable, 1 other.
Every command that reads params.yaml (status, registry, rollback, lineage, data, serve, batch-predict,
experiment, up, params) takes the same --set, so `transferline status --set registry.model_name=X` shows
the model a `run --set registry.model_name=X` registered; the run prints that command when it ends.

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

    def add(name: str, help_: str, **kw: Any) -> argparse.ArgumentParser:
        # run, status and params read params.yaml: --project and --set
        return sub.add_parser(name, help=help_, description=help_, parents=[settings_options()], **kw)

    add(
        "run",
        "Run one full retraining (the Prefect flow).",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status = add("status", "Show the registered model: versions, champion/challenger, metrics, lineage.")
    status.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    add(
        "params", "List every parameter of params.yaml with its value and meaning (--set: the effective one)."
    )
    approve = sub.add_parser(
        "approve",
        help="Approve (or --reject) a retraining run that waits for promotion approval.",
        description="Resume a flow run paused by promote.require_approval. Needs PREFECT_API_URL (the "
        "server the run uses). The Prefect UI offers the same form on the paused run.",
    )
    approve.add_argument("flow_run_id", help="the paused flow run's id (printed by the run, shown in the UI)")
    approve.add_argument("--reject", action="store_true", help="reject instead of approving")
    approve.add_argument("--comment", default="", help="recorded with the decision in the alias ledger")
    handlers: dict[str, Handler] = {
        "run": cmd_run,
        "status": cmd_status,
        "params": cmd_params,
        "approve": cmd_approve,
    }
    for add_commands in (
        add_registry_commands,
        add_data_commands,
        add_experiment_commands,
        add_ops_commands,
        add_serve_commands,
    ):
        handlers.update(add_commands(sub))
    parser.set_defaults(_extra_handlers=handlers)  # every command's handler, by name
    return parser


def _quiet_prefect_shutdown() -> None:
    # The ephemeral server can log "Error flushing events" tracebacks while it shuts down after the run
    # (a known harmless Prefect 3.8 race); the run itself is recorded. Keep the user's terminal clean.
    for name in ("prefect.server.services.task_run_recorder", "prefect.server.events", "prefect._internal"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def cmd_run(args: argparse.Namespace) -> int:
    try:  # refuse bad parameters before any work (no server, no data read)
        paths, cfg = settings(args)
    except ConfigError as err:
        return error(err, Exit.BAD_INPUT)
    if cfg.promote.require_approval and not os.environ.get("PREFECT_API_URL"):
        return error(
            "promote.require_approval needs a Prefect server that outlives this process, so that "
            "someone can approve: start one with `prefect server start` and set PREFECT_API_URL "
            "(e.g. http://127.0.0.1:4200/api)",
            Exit.BAD_INPUT,
        )
    from tasks.workspace import FolderBusy, exclusive

    try:  # refused before any server starts; the flow takes the same (re-entrant) lock again
        with exclusive(paths, cfg.ops.run_lock_wait_s, say=lambda m: print(m, file=sys.stderr, flush=True)):
            return _run(args, paths, cfg)
    except FolderBusy as err:
        return error(err, Exit.BAD_INPUT, "nothing was run")


def _run(args: argparse.Namespace, paths: ProjectPaths, cfg: Config) -> int:
    """cmd_run for a project folder this process holds."""
    from tasks.download import ModelSourceError, TransientDownloadError
    from tasks.gate import GateRejected
    from tasks.prepare import DataSourceError
    from tasks.registry import RegistryError
    from tasks.reports import ReportedStop
    from tasks.versioning import VersioningError

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
        summary = retrain(project_dir=str(paths.root), overrides=overrides(args) or None)
    except (ConfigError, DataSourceError, ModelSourceError) as err:
        return _fail(err, Exit.BAD_INPUT)
    except ReportedStop as err:  # data failed validation or drift blocked
        return _fail(err, Exit.INVALID_DATA, "nothing was trained or registered")
    except GateRejected as err:
        print(f"\nnot promoted: {err}\nsee reports/gate.md", file=sys.stderr)
        print(f"  versions: {follow_up('registry show', args, REGISTRY_SECTIONS)}", file=sys.stderr)
        return Exit.NOT_PROMOTED
    except (RegistryError, VersioningError, TransientDownloadError) as err:
        return _fail(err, Exit.BACKEND)
    minutes = (time.perf_counter() - started) / 60
    if summary.version == summary.champion_version:
        print(
            f"\n{summary.model_name} v{summary.version} was already '{CHAMPION}': this run reproduced it "
            f"exactly (same data, parameters, base model and weights), so no new version was registered "
            f"({minutes:.1f} min).\n"
            f"  registry: {follow_up('status', args, REGISTRY_SECTIONS)}"
        )
        return Exit.OK
    print(
        f"\n{summary.model_name} v{summary.version} is now '{CHAMPION}' ({summary.test_metric} "
        f"{summary.test_accuracy if summary.test_score is None else summary.test_score:.4f}; compared with "
        f"{'v' + summary.champion_version if summary.champion_version else 'no previous champion'}) "
        f"in {minutes:.1f} min.\n"
        f"  reports:  {paths.rel(paths.validation_dir)}/data_docs/index.html, "
        f"{paths.rel(paths.gate_report)}, {paths.rel(paths.evaluation_dir)}/\n"
        f"  registry: {follow_up('status', args, REGISTRY_SECTIONS)}   |   "
        f"mlflow ui --backend-store-uri {tracking}\n"
        f"  lineage:  {follow_up(f'lineage {summary.version}', args, REGISTRY_SECTIONS)}\n"
        f"  load it:  mlflow.pyfunc.load_model('models:/{summary.model_name}@{CHAMPION}')"
    )
    return Exit.OK


def _fail(err: Exception, code: Exit, consequence: str = "") -> int:
    print(file=sys.stderr)  # a blank line after the run's progress log
    return error(err, code, consequence)


def cmd_status(args: argparse.Namespace) -> int:
    from tasks.alias_lock import service_for
    from tasks.registry import Registry, RegistryError

    try:
        paths, cfg = settings(args)
        registry = Registry.for_project(paths)
        status = registry.status(cfg.registry.model_name)
    except ConfigError as err:
        return error(err, Exit.BAD_INPUT)
    except RegistryError as err:
        return error(err, Exit.BACKEND)
    # Which service serialises promotions and rollbacks, or that nothing beyond one process does.
    status["alias_lock"] = service_for(registry.tracking_uri, cfg.registry.model_name).to_dict()
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
        return Exit.OK
    print(f"model {status['model']}  ({status.get('tracking_uri', '')})")
    for alias in ALIASES:
        held = status.get(alias)
        print(f"  {alias:<10} {'v' + held['version'] if held else '—'}")
    print(f"  {'alias lock':<10} {status['alias_lock']['description']}")
    if not status["versions"]:
        print("  no versions yet: run `transferline run`")
        return Exit.OK
    from tasks.evaluate import F1, recorded_headline, recorded_metric

    print()
    rows, tagger = [], any(recorded_metric(v.get("metrics", {})) == F1 for v in status["versions"])
    for v in status["versions"]:
        tags = v.get("tags", {})
        acc = recorded_headline(v.get("metrics", {}))[1]
        rows.append(
            [
                v["version"],
                ",".join(v.get("aliases", [])) or "-",
                f"{acc:.4f}" if acc is not None else "-",
                tags.get("gate", "-"),
                tags.get("data_hash", "-")[:18],
                f"{tags.get('base_model_id', '-')} ({tags.get('base_model_sha256', '')[:12]})",
            ]
        )
    score = f"test_{F1}" if tagger else "test_acc"  # entity F1 for a tagger's versions, accuracy otherwise
    table(["version", "aliases", score, "gate", "data (DVC md5)", "base model"], rows)
    return Exit.OK


def cmd_approve(args: argparse.Namespace) -> int:
    from uuid import UUID

    from tasks.ledger import default_actor

    if not os.environ.get("PREFECT_API_URL"):
        return error("set PREFECT_API_URL to the Prefect server the paused run uses", Exit.BAD_INPUT)
    try:
        run_id = UUID(args.flow_run_id)
    except ValueError:
        return error(f"{args.flow_run_id!r} is not a flow run id", Exit.BAD_INPUT)
    from prefect.flow_runs import resume_flow_run

    decision = {
        "approve": not args.reject,
        "comment": args.comment,
        "approver": default_actor(),
    }
    try:
        resume_flow_run(run_id, run_input=decision)
    except Exception as err:  # not paused, unknown id, server down: say which
        return error(f"could not resume flow run {run_id}: {err}", Exit.BACKEND)
    print(f"{'rejected' if args.reject else 'approved'}: flow run {run_id} resumes")
    return Exit.OK


def cmd_params(args: argparse.Namespace) -> int:
    try:
        paths, _ = settings(args)  # validates the file and the overrides
    except ConfigError as err:
        return error(err, Exit.BAD_INPUT)
    given = {key.strip(): raw.strip() for key, _, raw in (item.partition("=") for item in args.overrides)}
    rows = describe_params(paths.params)
    width = max(len(k) for k, _, _ in rows)
    for key, value, comment in rows:
        if key in given:  # the effective value, as typed, marked
            value = f"{given[key]} (--set)"
        print(f"{key:<{width}}  {value:<28}  {comment}")
    return Exit.OK


def main(argv: list[str] | None = None) -> None:
    configure_environment()
    logging.getLogger("transferline").setLevel(logging.INFO)  # stage progress reaches Prefect's console
    args = _parser().parse_args(argv)
    raise SystemExit(args._extra_handlers[args.command](args))


if __name__ == "__main__":
    main()
