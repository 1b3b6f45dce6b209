"""The order the test workers receive the suite in: the long modules first, spread over the workers, the
short tests last.

pytest-xdist's `worksteal` hands each worker an equal count of consecutive tests, then lets an idle worker
take the second half of the longest queue. Counted in tests, not seconds, a worker can be left running a
long module while the others have finished; and the order of the files decides where the long modules land.
So the collection is arranged into one block per worker, each block the size xdist will cut: its long
modules first (balanced by their recorded wall time, longest first), then short tests to fill it. What
is left at the end of a queue, and so what is stolen, is always short; a long module is never split
between workers (its module fixtures run once, and modules whose tests build on each other stay in order).
The modules that use the session's trained champion (`champion_project`) go to one worker together: the
other workers never train it.

The recorded times are `tests/durations.json` (seconds of wall time per module in a `make test` run); to
record them again:

    CPU_PROFILE_DIR=/tmp/suite-cpu .venv/bin/python -m pytest -n 3 --dist worksteal -p tests.cpu_profile
    .venv/bin/python -m tests.scheduling /tmp/suite-cpu > tests/durations.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path

DURATIONS = Path(__file__).with_name("durations.json")
# A module recorded at this many seconds or more is placed as a whole at the head of a worker's block.
LONG_S = 5.0
UNKNOWN_TEST_S = 0.5  # a module not recorded yet: this much per test


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def block_sizes(count: int, workers: int) -> list[int]:
    """The counts xdist's worksteal sends each idle worker at the start: the rest split evenly, in turn."""
    sizes, left = [], count
    for i in range(workers):
        sizes.append(left // (workers - i))
        left -= sizes[-1]
    return sizes


def arrange(
    nodeids: list[str], seconds: dict[str, float], workers: int, together: Collection[str] = ()
) -> list[str]:
    """`nodeids` reordered into `workers` blocks of xdist's sizes, each its long modules first.

    The modules in `together` (those that share an expensive session fixture) go to one block as one unit,
    so that only one worker builds the fixture."""
    modules: dict[str, list[str]] = defaultdict(list)
    for nodeid in nodeids:
        modules[module_of(nodeid)].append(nodeid)

    def weight(unit: list[str]) -> float:
        return sum(seconds.get(m, UNKNOWN_TEST_S * len(modules[m])) for m in unit)

    group = [m for m in modules if m in together]
    long = [[m] for m in modules if m not in together and weight([m]) >= LONG_S] + ([group] if group else [])
    long.sort(key=weight, reverse=True)
    sizes = block_sizes(len(nodeids), workers)
    blocks: list[list[str]] = [[] for _ in sizes]
    load = [0.0] * workers
    for unit in long:
        ids = [n for m in unit for n in modules[m]]
        fits = [i for i in range(workers) if len(blocks[i]) + len(ids) <= sizes[i]]
        target = min(fits or range(workers), key=lambda i: load[i])
        blocks[target] += ids
        load[target] += weight(unit)
    placed = {n for block in blocks for n in block}
    short = [n for n in nodeids if n not in placed]
    for i, size in enumerate(sizes):
        take = max(0, size - len(blocks[i]))
        blocks[i] += short[:take]
        short = short[take:]
    blocks[-1] += short  # only when a long module overfilled a block
    return [n for block in blocks for n in block]


def record(profile_dir: Path) -> dict[str, float]:
    """Wall seconds per module from tests/cpu_profile.py's TSV files."""
    seconds: dict[str, float] = defaultdict(float)
    for tsv in sorted(profile_dir.glob("*.tsv")):
        for line in tsv.read_text().splitlines():
            nodeid, wall, *_ = line.split("\t")
            seconds[module_of(nodeid)] += float(wall)
    return {m: round(s, 1) for m, s in sorted(seconds.items())}


def load() -> dict[str, float]:
    return json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}


if __name__ == "__main__":
    print(json.dumps(record(Path(sys.argv[1])), indent=1))
