"""Retries happen only on transient I/O errors, with a real Prefect task run."""

from __future__ import annotations

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tasks.download import ModelSourceError, TransientDownloadError
from tasks.runtime import retry_on

pytestmark = pytest.mark.pipeline


def flaky_task(error: Exception, failures: int, calls: list[int]):
    @task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=0, retry_condition_fn=retry_on(type(error)))
    def flaky() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return "done"

    return flaky


def test_transient_errors_are_retried_until_success(prefect_server):
    calls: list[int] = []
    flaky = flaky_task(TransientDownloadError("connection reset"), failures=2, calls=calls)

    @flow
    def pipeline() -> str:
        return flaky()

    assert pipeline() == "done" and len(calls) == 3


def test_bad_input_is_not_retried(prefect_server):
    calls: list[int] = []
    flaky = flaky_task(TransientDownloadError("unused"), failures=0, calls=calls)

    @task(
        cache_policy=NO_CACHE,
        retries=3,
        retry_delay_seconds=0,
        retry_condition_fn=retry_on(TransientDownloadError),
    )
    def refuses() -> None:
        calls.append(1)
        raise ModelSourceError("only pickled weights")

    @flow
    def pipeline() -> None:
        flaky()
        refuses()

    with pytest.raises(ModelSourceError):
        pipeline()
    assert len(calls) == 2  # flaky once (it succeeded), refuses once: no retry of a bad input
