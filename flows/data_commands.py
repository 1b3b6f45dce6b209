"""Dataset lineage commands of the `transferline` CLI: `data status` and `data diff`.

A dataset version is the DVC md5 of data/prepared (a ".dir" object: the snapshot prepare wrote), as
dvc.lock records it and as every registered model version carries it in its ``data_hash`` tag.

flows/cli.py hosts them: ``handlers.update(add_commands(sub))`` registers the ``data`` parser and returns
its handler (it takes the parsed Namespace and returns an Exit code: 0 ok, 2 bad input, 5 registry error).
Reading DVC's cache is the DVC adapter's (tasks/versioning.py), which honours a configured cache.dir.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.cli_common import Exit, Handler, error, settings, settings_options, table
from tasks.config import Config, ConfigError
from tasks.paths import SPLITS, ProjectPaths
from tasks.registry import CHAMPION

PREPARED = "data/prepared"
NO_CHAMPION = f"no {CHAMPION} yet"
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_PREFIX = re.compile(r"^[0-9a-f]{6,32}$")

DIFF_EPILOG = """\
versions: a DVC md5 of data/prepared (with or without ".dir", or a unique prefix of at least 6 hex
digits), `current` (what dvc.lock records) or `champion` (the data_hash tag of the model with the
'champion' alias, of registry.model_name: --set applies as for `transferline run`). Both versions must be
in the local DVC cache (.dvc/cache, or DVC's cache.dir); `dvc pull` fetches them.

Rows are matched by normalised text (lower case, whitespace collapsed): added = text only in B, removed =
text only in A, changed = same text with another label. The total also counts texts that moved between
splits. exit codes: 0 ok, 2 unknown version or bad parameters, 5 registry unavailable.
"""


class DataCommandError(ValueError):
    """Bad input (unknown version, not in the cache, no dvc.lock): exit code 2."""


def add_commands(sub: argparse._SubParsersAction) -> dict[str, Handler]:
    """Add `data status` and `data diff` to the CLI's subparsers; returns {"data": handler}."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")

    data = sub.add_parser(
        "data",
        help="Dataset versions: the current snapshot, what trained the champion, diffs between versions.",
        description="Dataset versions (DVC md5s of data/prepared): the current snapshot, what trained "
        "the champion, and row-level diffs between versions.",
    )
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    status = data_sub.add_parser(
        "status",
        help="Current snapshot: version, rows per split and label, source; the champion's dataset.",
        description="Current snapshot (dvc.lock's data/prepared): version, rows per split and label, "
        "source; which dataset version trained the champion and whether the current one differs.",
        parents=[settings_options()],
    )
    common(status)
    diff = data_sub.add_parser(
        "diff",
        help="Rows added / removed / relabelled between two dataset versions, per split and in total.",
        description="Rows added / removed / relabelled between dataset versions A and B.",
        epilog=DIFF_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[settings_options()],
    )
    diff.add_argument("a", metavar="A", help="old version: md5, `current` or `champion`")
    diff.add_argument("b", metavar="B", help="new version: md5, `current` or `champion`")
    common(diff)
    return {"data": cmd_data}


# -- handlers ----------------------------------------------------------------------------------------------
def cmd_data(args: argparse.Namespace) -> int:
    handlers = {"status": cmd_data_status, "diff": cmd_data_diff}
    return handlers[args.data_command](args)


def _answer(
    args: argparse.Namespace,
    compute: Callable[[ProjectPaths, Config], dict],
    show: Callable[[dict], None],
) -> int:
    """Run a data command on the project's settings (with --set): map errors to exit codes, print JSON
    or the readable form."""
    from tasks.registry import RegistryError
    from tasks.versioning import VersioningError

    try:
        info = compute(*settings(args))
    except (ConfigError, DataCommandError, VersioningError) as err:
        return error(err, Exit.BAD_INPUT)
    except RegistryError as err:
        return error(err, Exit.BACKEND)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        show(info)
    return Exit.OK


def cmd_data_status(args: argparse.Namespace) -> int:
    return _answer(args, data_status, _print_status)


def cmd_data_diff(args: argparse.Namespace) -> int:
    return _answer(args, lambda paths, cfg: data_diff(paths, cfg, args.a, args.b), _print_diff)


def data_status(paths: ProjectPaths, cfg: Config) -> dict[str, Any]:
    """The current snapshot and the champion's dataset version, JSON-ready."""
    current = current_version(paths)
    manifest = _read_json(paths.prepared_manifest)
    workspace = _workspace_state(paths, current)
    champion = champion_dataset(paths, cfg.registry.model_name)
    champion_hash = champion["data_hash"] if champion else None
    return {
        "path": PREPARED,
        "version": current,
        "workspace": workspace,
        "source": (manifest or {}).get("source") or cfg.data.source,
        "params_source": cfg.data.source,
        "rows": (manifest or {}).get("rows"),
        "labels": (manifest or {}).get("labels"),
        "dropped_duplicates": (manifest or {}).get("dropped_duplicates"),
        "model": cfg.registry.model_name,
        "champion": champion,
        "differs_from_champion": (
            None if champion_hash is None or current is None else _bare(current) != _bare(champion_hash)
        ),
    }


def current_version(paths: ProjectPaths) -> str | None:
    """dvc.lock's md5 of data/prepared ("...dir"), None before the first `dvc repro prepare`."""
    from tasks.versioning import output_hashes

    return output_hashes(paths).get(PREPARED) or None


def champion_dataset(paths: ProjectPaths, model_name: str) -> dict[str, Any] | None:
    """{"version", "data_hash", "data_source"} of the champion; None without a registry or a champion."""
    from tasks.registry import Registry

    registry = Registry.for_project(paths)
    # The default registry is a SQLite file beside the project: without it there is no champion, and
    # opening it would create it (and run MLflow's schema migrations).
    if registry.tracking_uri == paths.default_tracking_uri and not paths.mlflow_db.is_file():
        return None
    champion = registry.get_alias(model_name, CHAMPION)
    if champion is None:
        return None
    return {
        "version": champion.version,
        "data_hash": champion.tags.get("data_hash") or None,
        "data_source": champion.tags.get("data_source") or None,
    }


def _workspace_state(paths: ProjectPaths, version: str | None) -> str:
    """Whether data/prepared on disk is the version dvc.lock names (compared through its manifest)."""
    if not paths.prepared_manifest.is_file():
        return "missing: run `dvc checkout data/prepared` or `dvc repro prepare`"
    if version is None:
        return "not recorded in dvc.lock: run `dvc repro prepare`"
    try:
        entries = _dir_entries(paths, version)
    except DataCommandError:
        return "unknown: the version is not in the local DVC cache (`dvc pull data/prepared`)"
    listed = entries.get(paths.prepared_manifest.name)
    actual = hashlib.md5(paths.prepared_manifest.read_bytes()).hexdigest()
    if listed == actual:
        return "matches dvc.lock"
    return "differs from dvc.lock: run `dvc status`, then `dvc repro prepare` or `dvc checkout data/prepared`"


def _print_status(info: dict[str, Any]) -> None:
    print(f"dataset {info['path']}")
    rows = [
        ("version", info["version"] or "none recorded in dvc.lock (run `dvc repro prepare`)"),
        ("workspace", info["workspace"]),
        ("source", info["source"]),
    ]
    if info["params_source"] != info["source"]:
        rows.append(("params source", f"{info['params_source']} (params.yaml; not yet prepared)"))
    champion = info["champion"]
    if champion is None:
        rows.append(("champion", f"{NO_CHAMPION} ({info['model']})"))
    else:
        rows.append(
            (
                "champion",
                f"{info['model']} v{champion['version']} trained on {champion['data_hash'] or 'unknown'}"
                f" (source {champion['data_source'] or '-'})",
            )
        )
        if info["differs_from_champion"] is not None:
            same = "differs from" if info["differs_from_champion"] else "is"
            rows.append(("current vs champion", f"the current snapshot {same} the champion's dataset"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("\nrows (data/prepared/manifest.json)")
    if not info["rows"]:
        print("  no manifest: run `dvc repro prepare`")
        return
    labels = info["labels"] or {}
    names = sorted({label for split in labels.values() for label in split})
    splits = [s for s in SPLITS if s in info["rows"]] + [s for s in info["rows"] if s not in SPLITS]
    rows = [
        [split, f"{info['rows'][split]:,}", *(f"{labels.get(split, {}).get(x, 0):,}" for x in names)]
        for split in splits
    ]
    total = [
        "total",
        f"{sum(info['rows'].values()):,}",
        *(f"{sum(labels.get(s, {}).get(x, 0) for s in info['rows']):,}" for x in names),
    ]
    table(["split", "rows", *names], [*rows, total], numeric_from=1)
    if info.get("dropped_duplicates"):
        print(f"  ({info['dropped_duplicates']:,} duplicate texts dropped by prepare)")


# -- diff --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Version:
    ref: str  # what the user typed
    md5: str  # "<32 hex>.dir"


def data_diff(paths: ProjectPaths, cfg: Config, a: str, b: str) -> dict[str, Any]:
    """Row-level differences between two dataset versions, per split and in total, JSON-ready."""
    import pandas as pd

    model = cfg.registry.model_name
    va, vb = resolve_version(paths, a, model), resolve_version(paths, b, model)
    frames_a, frames_b = read_version(paths, va), read_version(paths, vb)
    splits = [s for s in SPLITS if s in frames_a or s in frames_b]
    splits += sorted((set(frames_a) | set(frames_b)) - set(splits))
    empty = pd.DataFrame({"text": pd.Series([], dtype="object"), "label": pd.Series([], dtype="object")})
    per_split = {s: _compare(_keyed(frames_a.get(s, empty)), _keyed(frames_b.get(s, empty))) for s in splits}
    all_a = {k: v for s in splits for k, v in _keyed(frames_a.get(s, empty)).items()}
    all_b = {k: v for s in splits for k, v in _keyed(frames_b.get(s, empty)).items()}
    split_of_a = {k: s for s in splits for k in _keyed(frames_a.get(s, empty))}
    split_of_b = {k: s for s in splits for k in _keyed(frames_b.get(s, empty))}
    total = _compare(all_a, all_b)
    total["moved"] = sum(1 for k in set(split_of_a) & set(split_of_b) if split_of_a[k] != split_of_b[k])
    return {
        "a": {"ref": va.ref, "version": va.md5},
        "b": {"ref": vb.ref, "version": vb.md5},
        "identical": va.md5 == vb.md5,
        "splits": per_split,
        "total": total,
    }


def resolve_version(paths: ProjectPaths, ref: str, model_name: str) -> _Version:
    """`current`, `champion`, an md5 (".dir" optional) or a unique prefix -> the version's ".dir" md5."""
    from tasks.versioning import cache_objects

    word = ref.strip().lower()
    if word == "current":
        current = current_version(paths)
        if current is None:
            raise DataCommandError(
                f"`current`: {paths.root / 'dvc.lock'} records no {PREPARED}; run `dvc repro prepare` first"
            )
        return _Version(ref, _with_dir(current))
    if word == CHAMPION:
        champion = champion_dataset(paths, model_name)
        if champion is None:
            raise DataCommandError(f"`champion`: {NO_CHAMPION} for {model_name}; name a version instead")
        if not champion["data_hash"]:
            raise DataCommandError(
                f"`champion`: {model_name} v{champion['version']} has no data_hash tag;"
                " name a version instead"
            )
        return _Version(ref, _with_dir(champion["data_hash"]))
    bare = _bare(word)
    if _MD5.match(bare):
        return _Version(ref, bare + ".dir")
    if _PREFIX.match(bare):
        root = cache_objects(paths) / bare[:2]
        found = sorted(p.name for p in root.glob(bare[2:] + "*.dir")) if root.is_dir() else []
        if len(found) == 1:
            return _Version(ref, bare[:2] + found[0])
        if len(found) > 1:
            shown = ", ".join(bare[:2] + f for f in found[:5])
            raise DataCommandError(f"version {ref!r} is ambiguous: it starts {shown}; give more digits")
        raise DataCommandError(_not_cached(paths, ref, "no dataset version in the local DVC cache starts so"))
    raise DataCommandError(
        f"unknown dataset version {ref!r}: give a DVC md5 of {PREPARED} (32 hex digits, '.dir' optional,"
        " or a unique prefix of 6+), `current` or `champion`"
    )


def read_version(paths: ProjectPaths, version: _Version) -> dict[str, Any]:
    """{split: frame} of a version, read from the DVC cache (nothing is checked out)."""
    import pandas as pd

    from tasks.versioning import cache_object, cache_objects

    entries = _dir_entries(paths, version.md5, version.ref)
    objects = cache_objects(paths)
    frames = {}
    for relpath, md5 in entries.items():
        if not relpath.endswith(".parquet") or "/" in relpath:
            continue
        obj = cache_object(paths, md5, objects)
        if not obj.is_file():
            raise DataCommandError(
                _not_cached(paths, version.ref, f"its file {relpath} (md5 {md5}) is missing from the cache")
            )
        frames[relpath.removesuffix(".parquet")] = pd.read_parquet(obj)
    if not frames:
        raise DataCommandError(f"dataset version {version.ref!r} ({version.md5}) holds no split files")
    return frames


def _dir_entries(paths: ProjectPaths, md5: str, ref: str | None = None) -> dict[str, str]:
    """relpath -> md5 of a ".dir" object of the cache."""
    from tasks.versioning import cache_object

    path = cache_object(paths, _with_dir(md5))
    if not path.is_file():
        raise DataCommandError(_not_cached(paths, ref or md5, "it is not in the local DVC cache"))
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))
        return {str(e["relpath"]): str(e["md5"]) for e in listing}
    except (ValueError, KeyError, TypeError) as err:
        raise DataCommandError(
            f"{path}: not a DVC directory listing ({err}); is the cache corrupt?"
        ) from None


def _not_cached(paths: ProjectPaths, ref: str, why: str) -> str:
    from tasks.versioning import cache_dir

    return (
        f"dataset version {ref!r}: {why} ({cache_dir(paths)}). If the version exists on the DVC remote,"
        f" fetch it with `dvc pull` (or `dvc fetch`) in {paths.root}, e.g. after `git checkout <commit> --"
        " dvc.lock`; versions are the md5s of data/prepared in dvc.lock and in the models' data_hash tags"
        " (`transferline registry show`)."
    )


def _keyed(frame: Any) -> dict[str, str | None]:
    """normalised text -> label (first occurrence), prepare's dedup key."""
    out: dict[str, str | None] = {}
    if "text" not in frame.columns:
        return out
    labels = frame["label"] if "label" in frame.columns else [None] * len(frame)
    for text, label in zip(frame["text"], labels, strict=True):
        if text is None or text != text:  # None / NA / NaN
            continue
        key = " ".join(str(text).lower().split())
        out.setdefault(key, None if label is None or label != label else str(label))
    return out


def _compare(a: dict[str, str | None], b: dict[str, str | None]) -> dict[str, int]:
    shared = a.keys() & b.keys()
    changed = sum(1 for k in shared if a[k] != b[k])
    return {
        "rows_a": len(a),
        "rows_b": len(b),
        "added": len(b.keys() - a.keys()),
        "removed": len(a.keys() - b.keys()),
        "changed": changed,
        "unchanged": len(shared) - changed,
    }


def _print_diff(info: dict[str, Any]) -> None:
    a, b = info["a"], info["b"]

    def name(v: dict[str, str]) -> str:
        return (
            v["version"] if _bare(v["ref"].lower()) == _bare(v["version"]) else f"{v['ref']} ({v['version']})"
        )

    print(f"data diff  A = {name(a)}\n           B = {name(b)}")
    if info["identical"]:
        print("  A and B are the same dataset version")
    header = ["split", "rows A", "rows B", "added", "removed", "changed", "unchanged"]
    keys = ["rows_a", "rows_b", "added", "removed", "changed", "unchanged"]
    rows = [[s, *(f"{c[k]:,}" for k in keys)] for s, c in info["splits"].items()]
    rows.append(["total", *(f"{info['total'][k]:,}" for k in keys)])
    table(header, rows, numeric_from=1)
    total = info["total"]
    print(
        f"  (rows keyed by normalised text; changed = same text, another label; {total['moved']:,} texts"
        " moved between splits, counted per split but not in the total)"
    )


# -- helpers -----------------------------------------------------------------------------------------------
def _bare(md5: str) -> str:
    return md5.strip().lower().removesuffix(".dir")


def _with_dir(md5: str) -> str:
    return _bare(md5) + ".dir"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
