"""Dynamic batching (tasks/batching.py) on a real event loop and a real inference thread.

The scoring function here is a plain function that records each call (which model, which texts) and
answers with (model, text) pairs, so every test can see which requests shared a pass and that each
request got exactly its own rows back. The served model itself is covered by tests/serving and the
reliability row 21 test.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.batching import Batcher, BatchSettings


class Recorder:
    """score(model, texts): one result per text, after `delay_s` (a forward pass takes time)."""

    def __init__(self, delay_s: float = 0.0, fail_for: str | None = None) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.delay_s, self.fail_for = delay_s, fail_for
        self.threads: set[str] = set()

    def __call__(self, model: str, texts: list[str]) -> list[tuple[str, str]]:
        self.threads.add(threading.current_thread().name)
        self.calls.append((model, list(texts)))
        time.sleep(self.delay_s)
        if model == self.fail_for:
            raise RuntimeError(f"{model} cannot score")
        return [(model, text) for text in texts]


def serve(recorder: Recorder, settings: BatchSettings, requests: list[tuple[str, list[str], float]]):
    """Submit (model, texts, delay before submitting) concurrently; each request's result or exception."""

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="inference") as pool:
            batcher = Batcher(recorder, pool, settings)
            async with batcher.running():

                async def one(model: str, texts: list[str], after: float):
                    await asyncio.sleep(after)
                    return await batcher.submit(model, texts)

                results = await asyncio.gather(*(one(*r) for r in requests), return_exceptions=True)
            return results, batcher.stats

    return asyncio.run(main())


def test_requests_within_the_window_share_one_pass_and_get_their_own_rows():
    recorder = Recorder()
    requests = [("v1", [f"r{i}-a", f"r{i}-b"][: 1 + i % 2], 0.0) for i in range(8)]
    results, stats = serve(recorder, BatchSettings(0.05, 32, 256), requests)
    assert len(recorder.calls) == 1  # eight requests, one forward call
    for (model, texts, _), result in zip(requests, results, strict=True):
        assert result == [(model, text) for text in texts]
    assert stats.passes == 1 and stats.requests == 8 and stats.largest_pass == 8
    assert recorder.threads == {"inference_0"}  # every pass on the one inference thread


def test_one_request_per_pass_when_batching_is_off():
    recorder = Recorder()
    requests = [("v1", [f"t{i}"], 0.0) for i in range(5)]
    results, stats = serve(recorder, BatchSettings(0.05, 1, 256), requests)
    assert [texts for _, texts in recorder.calls] == [[f"t{i}"] for i in range(5)]
    assert results == [[("v1", f"t{i}")] for i in range(5)] and stats.passes == 5


def test_requests_arriving_during_a_pass_join_the_next_one_without_waiting_the_window():
    recorder = Recorder(delay_s=0.2)
    # the first request starts a pass alone; four more arrive while it runs
    requests = [("v1", ["first"], 0.0)] + [("v1", [f"t{i}"], 0.05) for i in range(4)]
    started = time.monotonic()
    results, stats = serve(recorder, BatchSettings(0.001, 32, 256), requests)
    assert [texts for _, texts in recorder.calls] == [["first"], ["t0", "t1", "t2", "t3"]]
    assert time.monotonic() - started < 1.0
    assert all(not isinstance(r, Exception) for r in results) and stats.passes == 2


def test_the_next_pass_waits_the_window_after_the_previous_one_for_the_requests_its_answers_set_off():
    recorder = Recorder(delay_s=0.3)
    # A full first pass (2 texts, the limit) runs for 300 ms at once; "a" arrives during it, long enough
    # before its end that a window counted from "a"'s arrival is over; "b" (a client answered by that
    # pass, asking again) arrives 100 ms after it ended, within the 200 ms counted from its end.
    requests = [("v1", ["f1", "f2"], 0.0), ("v1", ["a"], 0.01), ("v1", ["b"], 0.4)]
    results, stats = serve(recorder, BatchSettings(0.2, 32, 2), requests)
    assert [texts for _, texts in recorder.calls] == [["f1", "f2"], ["a", "b"]]
    assert all(not isinstance(r, Exception) for r in results) and stats.passes == 2


def test_each_model_scores_its_own_requests_during_a_hot_swap():
    recorder = Recorder()
    requests = [("v1", ["a"], 0.0), ("v2", ["b"], 0.0), ("v1", ["c"], 0.0), ("v2", ["d", "e"], 0.0)]
    results, _ = serve(recorder, BatchSettings(0.05, 32, 256), requests)
    assert sorted(recorder.calls) == [("v1", ["a", "c"]), ("v2", ["b", "d", "e"])]
    assert results == [[("v1", "a")], [("v2", "b")], [("v1", "c")], [("v2", "d"), ("v2", "e")]]


def test_a_pass_stops_taking_requests_at_the_text_and_request_limits():
    recorder = Recorder()
    requests = [("v1", [f"r{i}-{j}" for j in range(3)], 0.0) for i in range(5)]
    serve(recorder, BatchSettings(0.05, 32, 7), requests)  # at most 7 texts: two 3-text requests a pass
    assert [len(texts) for _, texts in recorder.calls] == [6, 6, 3]
    recorder = Recorder()
    serve(recorder, BatchSettings(0.05, 2, 256), requests)  # at most 2 requests a pass
    assert [len(texts) for _, texts in recorder.calls] == [6, 6, 3]


def test_a_failing_pass_fails_only_its_own_requests_and_the_batcher_goes_on():
    recorder = Recorder(fail_for="broken")
    requests = [("broken", ["x"], 0.0), ("v1", ["y"], 0.0), ("v1", ["z"], 0.3)]
    results, _ = serve(recorder, BatchSettings(0.05, 32, 256), requests)
    assert isinstance(results[0], RuntimeError) and "broken cannot score" in str(results[0])
    assert results[1] == [("v1", "y")] and results[2] == [("v1", "z")]  # the later pass still runs


@pytest.mark.parametrize("window_ms", [0.0, 2.0])
def test_a_lone_request_waits_at_most_the_window(window_ms: float):
    recorder = Recorder()
    started = time.perf_counter()
    results, _ = serve(recorder, BatchSettings(window_ms / 1000, 32, 256), [("v1", ["alone"], 0.0)])
    assert results == [[("v1", "alone")]]
    assert time.perf_counter() - started < 0.5  # the event loop's start and stop included
