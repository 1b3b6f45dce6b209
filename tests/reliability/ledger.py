"""What the reliability suite injected and what survived, as JSON lines, and the summary of those lines.

Each test wraps every fault or bad input it tries in `ledger.fault(...)` / `ledger.bad_input(...)`: the
entry is written when the block ends, marked survived/rejected only if no assertion inside it failed. Tests
add measured figures (`ledger.figure(...)`): data lost (files whose hash changed or vanished), wrongful
promotions, race trials, steps lost on resume, canary leaks, load errors.

`python -m tests.reliability.ledger FILE` prints the table and, as its last line, one JSON object.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = "TRANSFERLINE_RELIABILITY_LOG"
DEFAULT_LOG = ROOT / "test-output" / "reliability.jsonl"
SUMMED = ("data_lost", "wrongful_promotions", "race_trials", "race_trials_with_one_winner", "canary_leaks",
          "load_errors", "load_requests")  # fmt: skip
MAXED = ("steps_lost_on_resume", "load_p99_ms", "load_p50_ms")


def log_path() -> Path:
    return Path(os.environ.get(ENV) or DEFAULT_LOG)


class Ledger:
    def __init__(self, path: Path, test: str) -> None:
        self.path, self.test = path, test

    def _write(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps({"test": self.test, **entry}) + "\n")

    @contextlib.contextmanager
    def _entry(self, kind: str, row: int, name: str) -> Iterator[None]:
        ok = False
        try:
            yield
            ok = True
        finally:
            self._write({"kind": kind, "row": row, "name": name, "ok": ok})

    def fault(self, row: int, injected: str) -> contextlib.AbstractContextManager[None]:
        """A fault injected for real; survived = every assertion in the block held."""
        return self._entry("fault", row, injected)

    def bad_input(self, row: int, tried: str) -> contextlib.AbstractContextManager[None]:
        """A bad input fed to the real entry point; rejected = refused as the plan says (block passed)."""
        return self._entry("bad_input", row, tried)

    def figure(self, row: int, **values: float) -> None:
        self._write({"kind": "figure", "row": row, **values})


def hashes(roots: Iterable[Path]) -> dict[str, str]:
    """sha256 of every file under the given folders/files: what must survive a fault byte for byte."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def lost(before: dict[str, str], after: dict[str, str]) -> int:
    """Files present before that are gone or changed after."""
    return sum(1 for path, digest in before.items() if after.get(path) != digest)


def summarise(entries: list[dict]) -> tuple[str, dict]:
    faults = [e for e in entries if e["kind"] == "fault"]
    bad = [e for e in entries if e["kind"] == "bad_input"]
    figures = [e for e in entries if e["kind"] == "figure"]
    summary: dict[str, float | int | None] = {
        "faults_injected": len(faults),
        "faults_survived": sum(e["ok"] for e in faults),
        "bad_inputs_tried": len(bad),
        "bad_inputs_rejected": sum(e["ok"] for e in bad),
    }
    for key in SUMMED:
        summary[key] = sum(e.get(key, 0) for e in figures)
    for key in MAXED:
        values = [e[key] for e in figures if key in e]
        summary[key] = max(values) if values else None
    rows = sorted({e["row"] for e in entries})
    lines = ["| row | injected / tried | outcome |", "|---:|---|---|"]
    for row in rows:
        for e in (e for e in faults + bad if e["row"] == row):
            verdict = ("survived" if e["kind"] == "fault" else "rejected") if e["ok"] else "**FAILED**"
            lines.append(f"| {row} | {e['name']} | {verdict} |")
        for e in (e for e in figures if e["row"] == row):
            shown = ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("kind", "row", "test"))
            lines.append(f"| {row} | (measured) | {shown} |")
    return "\n".join(lines), summary


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else log_path()
    if not path.is_file():
        print(f"no reliability log at {path}: run `make reliability`", file=sys.stderr)
        return 2
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    table, summary = summarise(entries)
    print(table)
    print()
    failed = summary["faults_injected"] - summary["faults_survived"]
    failed += summary["bad_inputs_tried"] - summary["bad_inputs_rejected"]
    print(f"{len(entries)} entries from {path}; {failed} not survived or not rejected")
    print(json.dumps(summary))
    must_be_zero = ("data_lost", "wrongful_promotions", "canary_leaks", "load_errors")
    ok = failed == 0 and all(summary[k] == 0 for k in must_be_zero)
    ok = ok and summary["race_trials"] == summary["race_trials_with_one_winner"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
