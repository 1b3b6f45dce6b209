"""What every `transferline` command shares: exit codes, the project and settings options, errors, tables.

Every command that reads the project's settings takes them through ``settings_options()`` (``--project``
and the repeatable ``--set KEY=VALUE``) and ``settings(args)``, so an override given to `run` can be given
to any command that looks at what the run produced, and means the same there.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any

from tasks.config import Config, load_config, parse_overrides
from tasks.paths import ProjectPaths

PROG = "transferline"


class Exit(IntEnum):
    """Exit codes of every command, so schedulers and scripts can tell outcomes apart."""

    OK = 0
    FAILED = 1
    BAD_INPUT = 2  # bad parameters, arguments or source
    INVALID_DATA = 3  # the data failed validation or drift blocked it
    NOT_PROMOTED = 4  # trained and registered, but the gate failed or approval was refused
    BACKEND = 5  # the registry, DVC or Prefect is unavailable or refused


Handler = Callable[[argparse.Namespace], int]


def project_options() -> argparse.ArgumentParser:
    """A parent parser with ``--project``, for commands that read no settings."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--project", type=Path, default=Path("."), help="project folder (default: current)")
    return parent


def settings_options() -> argparse.ArgumentParser:
    """A parent parser with ``--project`` and ``--set``, for every command that reads params.yaml."""
    parent = project_options()
    parent.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params.yaml key, as `transferline run --set` does (repeatable); see "
        "`transferline params`",
    )
    return parent


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The command's ``--set`` items as dotted keys with typed values; ConfigError when malformed."""
    return parse_overrides(args.overrides)


def settings(args: argparse.Namespace) -> tuple[ProjectPaths, Config]:
    """The project's paths and its params.yaml with the command's ``--set`` overrides; ConfigError when
    the file or an override is invalid."""
    paths = ProjectPaths.at(args.project)
    return paths, load_config(paths.params, overrides(args))


def error(err: Exception | str, code: Exit, consequence: str = "") -> int:
    """Print ``error: ...`` (and what it means for the user, if given) to stderr; returns the exit code."""
    tail = f"\n({consequence})" if consequence else ""
    print(f"error: {err}{tail}", file=sys.stderr)
    return int(code)


def follow_up(command: str, args: argparse.Namespace, sections: Sequence[str]) -> str:
    """The exact command line that looks at what this command did: the same ``--project`` and the
    ``--set`` items, as typed, of the sections `command` reads (e.g. ``registry`` for `status`)."""
    words = [PROG, *command.split()]
    if Path(args.project) != Path("."):
        words += ["--project", str(args.project)]
    for item in args.overrides:
        if item.partition("=")[0].strip().partition(".")[0] in sections:
            words += ["--set", item]
    return shlex.join(words)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int | None = None) -> None:
    """Print an aligned table indented by two spaces; columns from index `numeric_from` on are
    right-aligned (counts), the others left-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        cells = [
            f"{x!s:>{w}}" if numeric_from is not None and i >= numeric_from else f"{x!s:<{w}}"
            for i, (x, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + "  ".join(cells).rstrip())
