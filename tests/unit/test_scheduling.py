"""The order the test workers receive the suite in (tests/scheduling.py), on made-up modules."""

from tests.scheduling import arrange, block_sizes, module_of


def suite() -> tuple[list[str], dict[str, float]]:
    counts = {"a_long": 3, "b_long": 2, "c_long": 1, "d_short": 10, "e_short": 9, "f_user": 2, "g_user": 1}
    ids = [f"tests/{m}.py::t{i}" for m, n in counts.items() for i in range(n)]
    seconds = {"tests/a_long.py": 90, "tests/b_long.py": 60, "tests/c_long.py": 50, "tests/f_user.py": 3}
    return ids, {**seconds, "tests/d_short.py": 2, "tests/e_short.py": 1, "tests/g_user.py": 1}


def blocks(order: list[str], workers: int) -> list[list[str]]:
    out, start = [], 0
    for size in block_sizes(len(order), workers):
        out.append(order[start : start + size])
        start += size
    return out


def test_block_sizes_are_the_counts_worksteal_sends_each_worker():
    assert block_sizes(610, 3) == [203, 203, 204]
    assert block_sizes(7, 2) == [3, 4]


def test_long_modules_lead_the_blocks_whole_and_the_shared_fixtures_users_stay_together():
    ids, seconds = suite()
    together = {"tests/f_user.py", "tests/g_user.py"}
    order = arrange(ids, seconds, 3, together)
    assert sorted(order) == sorted(ids)
    parts = blocks(order, 3)
    heads = {module_of(block[0]) for block in parts}
    assert heads == {"tests/a_long.py", "tests/b_long.py", "tests/c_long.py"}
    for module in ("tests/a_long.py", "tests/b_long.py", "tests/c_long.py"):
        assert sum(any(module_of(n) == module for n in block) for block in parts) == 1, module
    (users,) = [block for block in parts if any(module_of(n) in together for n in block)]
    assert sum(module_of(n) in together for n in users) == 3
    for block in parts:  # within a block: long modules first, short tests behind them
        kinds = ["long" if seconds[module_of(n)] >= 5 or module_of(n) in together else "short" for n in block]
        assert kinds == sorted(kinds)


def test_without_recorded_times_the_order_is_still_the_whole_suite():
    ids, _ = suite()
    assert sorted(arrange(ids, {}, 2)) == sorted(ids)
