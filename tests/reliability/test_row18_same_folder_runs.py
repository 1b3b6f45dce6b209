"""Row 18: two `transferline run` in the same project folder, and the holder killed with SIGKILL.

Real runs in the session's champion project (v1 trained on these very inputs, so a run that gets through
finds nothing to redo and ends quickly), sharing the session's Prefect server as a deployment's runs do:

1. run A starts; run B, started while A holds the folder, is refused at once with exit code 2 and a
   message naming A (its pid and command); nothing of B runs;
2. A is SIGKILLed (its whole process group) while it holds the folder;
3. run C (allowed to wait) takes the folder at once and says that the previous run died holding it; run
   D, started while C runs and allowed to wait, says whom it waits for and starts only after C's last line
   (printed while C still holds the folder). Both end as they should: v1 already is the champion.

Runs in different folders are never serialised: tests/unit/test_workspace.py. bench/scaleout.py does the
same with a run that trains.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.ledger import Ledger
from tests.services import RunProcess

pytestmark = pytest.mark.pipeline
HEADER = "transferline: retraining"  # the run's first line: printed once it holds the folder
DONE = "v1 was already 'champion'"  # its last: the champion was trained on these inputs


def holder_pid(project: Path) -> int | None:
    from tasks.paths import ProjectPaths
    from tasks.workspace import read_holder

    holder = read_holder(ProjectPaths.at(project))
    return holder["pid"] if holder else None


def test_same_folder_runs_take_turns_and_a_killed_holder_frees_the_folder(
    champion_project: Path, ledger: Ledger, prefect_server
):
    from prefect.settings import get_current_settings

    project = champion_project
    # The session's Prefect server, as a deployment's runs share one: no temporary server per run.
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}

    runs: list[RunProcess] = []

    def start(*args: str) -> RunProcess:
        runs.append(RunProcess(project, *args, env=env))
        return runs[-1]

    a = start()
    try:
        a.wait_until(lambda: holder_pid(project) == a.proc.pid, "run A holds the folder")
        with ledger.bad_input(18, "a run in a folder another run holds -> refused, exit 2, holder named"):
            b = start()
            assert b.wait(timeout=120) == 2, b.text()
            assert f"pid {a.proc.pid} on " in b.text() and f"run --project {project}" in b.text(), b.text()
            assert "another run is using the project folder" in b.text() and b.first(HEADER) is None
        with ledger.fault(18, "the run holding a folder SIGKILLed -> the next run takes over at once"):
            a.kill()
            a.wait(timeout=60)
            c = start("--set", "ops.run_lock_wait_s=900")
            c.wait_until(lambda: holder_pid(project) == c.proc.pid, "run C holds the folder", timeout=120)
            d = start("--set", "ops.run_lock_wait_s=900")
            d.wait_until(lambda: d.first("waiting up to 900 s") is not None, "run D waits", timeout=120)
            assert c.wait() == 0, c.text()
            assert "ended without releasing it" in c.text() and f"pid {a.proc.pid} on " in c.text(), c.text()
            assert DONE in c.text(), c.text()
        with ledger.fault(18, "a run started while another holds the folder waits, then runs after it"):
            assert d.wait() == 0, d.text()
            assert f"pid {c.proc.pid} on " in d.text(), d.text()  # it said whom it waited for
            # D's work began after C's last line, which C prints while it still holds the folder
            assert d.first(HEADER) > c.first(DONE), "run D started before run C ended"
            assert DONE in d.text(), d.text()
        spans = [f"{r.started - a.started:.0f}-{r.ended - a.started:.0f}" for r in runs]
        print(f"\nrow 18, runs A, B, C, D from-to, in seconds after A started: {spans}")
    finally:
        for run in runs:
            run.kill()
