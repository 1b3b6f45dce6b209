"""Registry commands of the `transferline` CLI: `registry show`, `rollback` and `lineage`.

flows/cli.py hosts them: ``handlers.update(add_commands(sub))`` registers the parsers and returns one
handler per top-level command name (each takes the parsed Namespace and returns an Exit code). Each reads
the project's settings with the same --set overrides as `run` (flows/cli_common.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.cli_common import Exit, Handler, error, settings, settings_options, table
from tasks.config import ConfigError
from tasks.inference import METADATA_FILE
from tasks.ledger import experiment_name
from tasks.registry import ALIASES

VALIDATION_SUMMARY = "validation/summary.md"
GATE_REPORT = "gate.md"

ROLLBACK_EPILOG = """\
examples:
  transferline rollback --reason "v7 mislabels sarcasm in production"          # back to 'previous'
  transferline rollback --to 4 --reason "restore the last model before the data change"

'champion' moves to the target, 'previous' to the champion it replaced; both moves are recorded in the
alias ledger (`transferline registry show`; in the MLflow UI, the runs of the experiment '<model>-ledger').
Serving code that loads models:/NAME@champion picks it up on its next load. --set overrides params.yaml
as for `transferline run` (e.g. --set registry.model_name=...). exit codes: 0 moved, 2 bad parameters,
5 registry unavailable or refused.
"""


def add_commands(sub: argparse._SubParsersAction) -> dict[str, Handler]:
    """Add `registry show`, `rollback` and `lineage` to the CLI's subparsers; returns their handlers."""
    registry = sub.add_parser(
        "registry",
        help="Inspect the MLflow registry: versions, aliases and the alias ledger.",
        description="Inspect the MLflow registry: versions, aliases and the alias ledger.",
    )
    registry_sub = registry.add_subparsers(dest="registry_command", required=True, metavar="SUBCOMMAND")
    show = registry_sub.add_parser(
        "show",
        help="Versions (accuracy, gate, dataset), aliases and every recorded alias move.",
        description="Versions (accuracy, gate, dataset), aliases and every recorded alias move (also the "
        "runs of the MLflow experiment '<model>-ledger').",
        parents=[settings_options()],
    )
    show.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")

    rollback = sub.add_parser(
        "rollback",
        help="Move 'champion' back to 'previous' (or to --to VERSION), recording why.",
        description="Move 'champion' back to 'previous' (or to --to VERSION), recording why.",
        epilog=ROLLBACK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[settings_options()],
    )
    rollback.add_argument("--to", dest="to_version", metavar="VERSION", help="version to restore")
    rollback.add_argument("--reason", required=True, help="why (recorded in the alias ledger; required)")
    rollback.add_argument("--actor", help="who rolls back (default: user@host)")
    rollback.add_argument(
        "--expect-champion", metavar="VERSION",
        help="refuse (exit 5, nothing moved) unless the champion is still VERSION, the one you looked at: "
        "a promotion landing first is then not undone unseen",
    )  # fmt: skip

    lineage = sub.add_parser(
        "lineage",
        help="Where a version came from: dataset (and how to restore it), code, params, base model, "
        "validation and gate results, MLflow and Prefect runs.",
        description="Where a version came from: dataset (and how to restore it), code, params, base "
        "model, validation and gate results, MLflow and Prefect runs.",
        parents=[settings_options()],
    )
    lineage.add_argument("version", help="model version number, e.g. 3")
    lineage.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")

    return {"registry": cmd_registry, "rollback": cmd_rollback, "lineage": cmd_lineage}


# -- handlers ----------------------------------------------------------------------------------------------
def cmd_registry(args: argparse.Namespace) -> int:
    handlers = {"show": cmd_registry_show}
    return handlers[args.registry_command](args)


def cmd_registry_show(args: argparse.Namespace) -> int:
    from tasks.registry import RegistryError

    try:
        registry, model = _resolve(args)
        versions = registry.list_versions(model)
        ledger = registry.ledger(model)
    except (ConfigError, RegistryError) as err:
        return _error(err)
    aliases = {a: next((v.version for v in versions if a in v.aliases), None) for a in ALIASES}
    if args.json:
        out = {
            "model": model,
            "tracking_uri": registry.tracking_uri,
            "aliases": aliases,
            "versions": [_version_row(v) for v in versions],
            "ledger": [e.to_dict() for e in ledger],
        }
        print(json.dumps(out, indent=2, sort_keys=True, default=str))
        return Exit.OK

    print(f"model {model}  ({registry.tracking_uri})")
    print("  " + "   ".join(f"{a}: {'v' + v if v else '—'}" for a, v in aliases.items()))
    print("\nversions")
    if versions:
        from tasks.evaluate import F1, recorded_metric

        rows = [_version_row(v) for v in versions]
        tagger = any(recorded_metric(v.metrics) == F1 for v in versions)  # entity F1 is a tagger's headline
        table(
            ["version", "aliases", "test_f1" if tagger else "test_acc", "gate", "data_hash", "created"],
            [
                [
                    "v" + r["version"],
                    ",".join(r["aliases"]) or "-",
                    _fmt(r["test_f1"] if tagger else r["test_accuracy"]),
                    r["gate"] or "-",
                    (r["data_hash"] or "-")[:20],
                    r["created"],
                ]
                for r in rows
            ],
        )
    else:
        print("  no versions yet: run `transferline run`")
    print("\nalias ledger (oldest first)")
    if ledger:
        table(
            ["time (UTC)", "actor", "alias", "move", "reason"],
            [
                [
                    e.at.replace("T", " ")[:19],
                    e.actor,
                    e.alias,
                    f"{_v(e.from_version)} → {_v(e.to_version)}",
                    _one_line(e.reason, 60),
                ]
                for e in ledger
            ],
        )
        print(f"  (MLflow UI, Model training view: experiment {experiment_name(model)!r}, one run per move)")
    else:
        print("  no alias moves recorded")
    return Exit.OK


def cmd_rollback(args: argparse.Namespace) -> int:
    from tasks.registry import RegistryError

    try:
        registry, model = _resolve(args)
        expected = args.expect_champion
        before, after = registry.rollback(
            model, args.to_version, reason=args.reason, actor=args.actor, expected_champion=expected
        )
    except (ConfigError, RegistryError) as err:
        return _error(err)
    print(f"rolled back {model}: champion {_v(before)} → {_v(after)}")
    if before is not None:
        print(f"  previous is now {_v(before)} (roll forward with: transferline rollback --reason ...)")
    print(f"  reason: {args.reason.strip()}")
    print(f"  serving: models:/{model}@champion now loads {_v(after)}")
    return Exit.OK


def cmd_lineage(args: argparse.Namespace) -> int:
    from tasks.registry import RegistryError

    if not str(args.version).strip().lstrip("v").isdigit():
        return error(f"version must be a number like 3, got {args.version!r}", Exit.BAD_INPUT)
    version = str(int(str(args.version).strip().lstrip("v")))
    try:
        registry, model = _resolve(args)
        info = lineage(registry, model, version)
    except (ConfigError, RegistryError) as err:
        return _error(err)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
        return Exit.OK
    _print_lineage(info)
    return Exit.OK


# -- lineage -----------------------------------------------------------------------------------------------
def lineage(registry: Any, model: str, version: str) -> dict:
    """Everything recorded about one version, JSON-ready (see `transferline lineage --help`)."""
    v = registry.get_version(model, version)
    tags = v.tags
    run = registry.run_details(v.run_id) if v.run_id else None
    summary = (
        _run_text(registry, v.run_id, VALIDATION_SUMMARY)
        if run and VALIDATION_SUMMARY in run.artifacts
        else None
    )
    data_hash = tags.get("data_hash") or None
    commit = tags.get("git_commit") or None
    gate_metric = (run.metrics if run else {}).get("gate_passed", v.metrics.get("gate_passed"))
    search = _search(registry, run)
    return {
        "model": model,
        "version": v.version,
        "aliases": list(v.aliases),
        "created": _iso(v.created_ms),
        "mlflow_run_id": v.run_id,
        "prefect_flow_run_id": tags.get("prefect_flow_run_id") or None,
        "git_commit": commit,
        "dataset": {
            "path": "data/prepared",
            "data_hash": data_hash,
            "data_sha256": tags.get("data_sha256") or None,
            "data_source": tags.get("data_source") or None,
            "restore": restore_commands(commit, data_hash),
        },
        "params_hash": tags.get("params_hash") or None,
        "params": dict(sorted(run.params.items())) if run else {},
        "metrics": dict(sorted(v.metrics.items())),
        "base_model": {
            "id": tags.get("base_model_id") or None,
            "revision": tags.get("base_model_revision") or None,
            "sha256": tags.get("base_model_sha256") or None,
        },
        "weights_hash": tags.get("weights_hash") or None,
        "validation": {
            "summary_artifact": VALIDATION_SUMMARY if summary is not None else None,
            "summary": summary,
            "artifacts": [a for a in (run.artifacts if run else ()) if a.startswith("validation/")],
        },
        "gate": {
            "result": tags.get("gate") or None,
            "summary": tags.get("gate_summary") or None,
            "compared_with_champion": tags.get("compared_with_champion") or None,
            "gate_passed_metric": gate_metric,
            "report_artifact": GATE_REPORT if run and GATE_REPORT in run.artifacts else None,
        },
        "promoted_at": tags.get("promoted_at") or None,
        # train.strategy auto: every trial of the search, and what it chose (None for a fixed strategy)
        "strategy_search": search["strategy_search"] if search else None,
        "chosen": search["chosen"] if search else None,
        "run_artifacts": list(run.artifacts) if run else [],
    }


def _search(registry: Any, run: Any) -> dict | None:
    """The strategy search recorded in the run's training metadata, if the version's training had one."""
    if run is None or METADATA_FILE not in run.artifacts:
        return None
    text = _run_text(registry, run.run_id, METADATA_FILE)
    return json.loads(text or "{}").get("training", {}).get("search")


def restore_commands(git_commit: str | None, data_hash: str | None) -> list[str]:
    """Shell lines (commands and # comments) that bring back the version's prepared dataset.

    Through git: dvc.lock of the run's commit names the snapshot. By hash: a .dvc file naming the DVC md5
    restores it into restore/prepared from the cache or the remote, whatever that commit's dvc.lock says
    (the flow records the commit before it writes dvc.lock, and the tree may have been dirty).
    """
    if not data_hash:
        return ["# cannot derive: the version has no data_hash tag"]
    lines = []
    sha = (git_commit or "").removesuffix("-dirty")
    if sha and sha != "unknown":
        if git_commit != sha:
            lines.append(
                f"# the run's working tree was dirty at {sha}: its dvc.lock may not name {data_hash}"
            )
        lines += [
            f"git checkout {sha} -- dvc.lock && dvc checkout data/prepared",
            "dvc pull data/prepared  # when the local cache lacks it (fetches from the DVC remote)",
            "git checkout HEAD -- dvc.lock  # afterwards: back to the current dvc.lock",
        ]
    else:
        lines.append("# no git commit recorded: restore by hash")
    lines += [
        "# by hash, into restore/prepared (cache object files/md5/"
        f"{data_hash[:2]}/{data_hash[2:]} under `dvc cache dir`):",
        "mkdir -p restore && printf 'outs:\\n- md5: %s\\n  hash: md5\\n  path: prepared\\n' "
        f"{data_hash} > restore/prepared.dvc && dvc pull restore/prepared.dvc",
    ]
    return lines


def _print_lineage(info: dict) -> None:
    ds, base, gate, val = info["dataset"], info["base_model"], info["gate"], info["validation"]
    from tasks.evaluate import recorded_headline

    aliases = f"  [{', '.join(info['aliases'])}]" if info["aliases"] else ""
    headline, score = recorded_headline(info["metrics"])
    print(f"{info['model']} v{info['version']}{aliases}  (registered {info['created']})")
    rows = [
        ("dataset", f"{ds['path']} md5 {ds['data_hash'] or '-'}  (source {ds['data_source'] or '-'})"),
        ("data sha256", ds["data_sha256"] or "-"),
        ("git commit", info["git_commit"] or "-"),
        ("params hash", info["params_hash"] or "-"),
        ("base model", f"{base['id'] or '-'} @ {base['revision'] or '-'}  sha256 {base['sha256'] or '-'}"),
        ("weights (DVC md5)", info["weights_hash"] or "-"),
        (headline, _fmt(score)),
        ("strategy search", _search_line(info["strategy_search"], info["chosen"])),
        ("gate", gate["summary"] or gate["result"] or "-"),
        ("compared with", gate["compared_with_champion"] or "-"),
        ("promoted at", info["promoted_at"] or "-"),
        ("MLflow run", info["mlflow_run_id"] or "-"),
        ("Prefect flow run", info["prefect_flow_run_id"] or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("\nrestore the dataset")
    for line in ds["restore"]:
        print(f"  {line}")
    print("\nparams")
    if info["params"]:
        pw = max(len(k) for k in info["params"])
        for key, value in info["params"].items():
            print(f"  {key:<{pw}}  {_one_line(value, 80)}")
    else:
        print("  (no run params recorded)")
    print("\nvalidation")
    if val["summary"] is not None:
        for line in val["summary"].strip().splitlines():
            print(f"  {line}".rstrip())
    else:
        print(f"  no {VALIDATION_SUMMARY} among the run's artifacts")
    if info["run_artifacts"]:
        print("\nrun artifacts: " + ", ".join(info["run_artifacts"]))


def _search_line(trials: list[dict] | None, chosen: dict | None) -> str:
    if not trials or not chosen:
        return "- (a fixed train.strategy)"
    rate = chosen["settings"].get("learning_rate")
    seconds = sum(t["seconds"] for t in trials)
    return (
        f"{chosen['strategy']} at learning rate {rate:g} chosen from {len(trials)} trials ({seconds:.0f} s)"
    )


# -- helpers -----------------------------------------------------------------------------------------------
def _resolve(args: argparse.Namespace) -> tuple[Any, str]:
    """The project's registry and the model name its settings (with --set) give."""
    from tasks.registry import Registry

    paths, cfg = settings(args)
    return Registry.for_project(paths), cfg.registry.model_name


def _error(err: Exception) -> int:
    return error(err, Exit.BAD_INPUT if isinstance(err, ConfigError) else Exit.BACKEND)


def _run_text(registry: Any, run_id: str, artifact: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="transferline-lineage-") as tmp:
        path = registry.download_run_artifact(run_id, artifact, Path(tmp) / Path(artifact).name)
        return path.read_text(encoding="utf-8", errors="replace")


def _version_row(v: Any) -> dict:
    return {
        "version": v.version,
        "aliases": list(v.aliases),
        "test_accuracy": v.metrics.get("test_accuracy"),
        "test_f1": v.metrics.get("test_f1"),  # token classification's headline (None for classifiers)
        "gate": v.tags.get("gate"),
        "data_hash": v.tags.get("data_hash"),
        "created": _iso(v.created_ms),
        "run_id": v.run_id,
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _v(version: str | None) -> str:
    return "—" if version is None else f"v{version}"


def _one_line(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
