"""Row 21: serving under concurrent load while the champion alias moves.

A real `transferline serve` (dynamic batching on, its defaults) on the session's champion (v1); a second
version, v1 with its classifier bias shifted so that it labels some texts the other way, is registered
through the real registry API. Eight client threads keep sending requests of one to four texts while the
alias moves v1 -> v2 -> v1 -> v2 (each move waits until the service answers with the new version).

Every request must be answered (HTTP 200, none lost or failed), by exactly one version, named in the body
and the X-Model-Version header, whose offline predictions the answer's labels are. The texts are the test
split's where both versions are confident (|logit margin| above MARGIN): so padding next to other
requests' texts in a shared pass cannot tip a label, and a label that belongs to the other version can
only mean a request scored by two versions or by the wrong one. The service's /version shows that
requests did share passes.
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests import services
from tests.reliability.ledger import Ledger
from tests.serving.conftest import model_name, register_variant, registry

pytestmark = pytest.mark.pipeline
CLIENTS = 8
BIAS_SHIFT = 1.5  # logits in favour of the first class: v2 labels the texts with a margin below it otherwise
MARGIN = 0.25  # a text counts when both versions' logit margins are at least this far from a tie
MOVES = 3  # v1 -> v2 -> v1 -> v2


def confident_texts(v1: Path, v2: Path, texts: list[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The texts both versions label with a margin of at least MARGIN, and each version's labels of them."""
    from tasks.inference import Predictor

    labels: dict[str, dict[str, str]] = {}
    keep = set(texts)
    for version, folder in (("v1", v1), ("v2", v2)):
        predictor = Predictor(folder, 48)
        logits = predictor.logits(texts, 32)
        margins = (logits[:, 0] - logits[:, 1]).abs().tolist()
        keep &= {t for t, m in zip(texts, margins, strict=True) if m >= MARGIN}
        names = predictor.predict(texts, 32)
        labels[version] = dict(zip(texts, names, strict=True))
    chosen = [t for t in texts if t in keep]
    return chosen, labels


def client(port: int, texts: list[str], seed: int, stop: threading.Event, log: list) -> None:
    """Requests of 1-4 texts on one keep-alive connection until `stop`; (status, body version, header
    version, texts, labels, time answered) per request, or the exception."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    i = seed
    while not stop.is_set():
        batch = [texts[(i + k) % len(texts)] for k in range(1 + i % 4)]
        i += 5
        try:
            conn.request(
                "POST", "/predict", json.dumps({"texts": batch}), {"Content-Type": "application/json"}
            )
            response = conn.getresponse()
            body = json.loads(response.read())
            labels = [p["label"] for p in body.get("predictions", [])]
            header = response.getheader("X-Model-Version")
            log.append((response.status, body.get("version"), header, batch, labels, time.monotonic()))
        except Exception as err:  # a dropped connection is a failed request too
            log.append((None, repr(err), None, batch, None, time.monotonic()))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)


def test_concurrent_clients_are_each_answered_by_one_named_version_while_the_alias_moves(
    champion_project: Path, tmp_path: Path, ledger: Ledger
):
    name, reg = model_name(champion_project), registry(champion_project)
    assert reg.get_alias(name, "champion").version == "1"
    v1_dir = champion_project / "models" / "challenger"  # the files of v1
    v2 = register_variant(champion_project, v1_dir, tmp_path / "v2", bias_shift=BIAS_SHIFT)
    split = pd.read_parquet(champion_project / "data" / "prepared" / "test.parquet")["text"].tolist()
    texts, offline = confident_texts(v1_dir, tmp_path / "v2", split)
    differ = [t for t in texts if offline["v1"][t] != offline["v2"][t]]
    assert len(texts) >= 20 and len(differ) >= 5, (len(texts), len(differ))
    expected = {"1": offline["v1"], v2: offline["v2"]}

    server = services.start_serve(champion_project, tmp_path / "serve.log", "--poll-interval", "0.2")
    stop, logs = threading.Event(), [[] for _ in range(CLIENTS)]
    threads = [
        threading.Thread(target=client, args=(server.port, texts, 7 * i, stop, log))
        for i, log in enumerate(logs)
    ]
    try:
        for t in threads:
            t.start()
        with ledger.fault(21, f"{CLIENTS} concurrent clients while the champion alias moves {MOVES} times"):
            champion = "1"
            for move in range(MOVES):
                moved_at = time.monotonic()
                champion = move_alias(reg, name, champion, v2, f"row 21 move {move}")
                answered = lambda v=champion, t=moved_at: answered_by(logs, v, t) >= 2 * CLIENTS  # noqa: E731
                wait_for(answered, f"answers from v{champion}", server)
            stop.set()
            for t in threads:
                t.join(timeout=60)
            answers = [entry for log in logs for entry in log]
            failed = [a for a in answers if a[0] != 200]
            assert not failed, failed[:3]
            for _, version, header, batch, labels, _ in answers:
                assert version == header and version in expected, (version, header)
                assert labels == [expected[version][t] for t in batch], (version, batch, labels)
            for log in logs:  # each client saw the versions in the order the alias took them
                switches = sum(1 for x, y in itertools.pairwise(log) if x[1] != y[1])
                assert switches <= MOVES, [entry[1] for entry in log]
        batching = json.loads(request(server.port, "/version"))["batching"]
        assert batching["mean_requests_per_pass"] > 1.0, batching  # concurrent requests shared passes
        ledger.figure(21, load_requests=len(answers), load_errors=len(failed))
        print(f"\nrow 21: {len(answers)} answers, {len(failed)} failed; batching {batching}")
    finally:
        stop.set()
        server.stop()
        if reg.get_alias(name, "champion").version != "1":
            reg.rollback(name, to_version="1", reason="row 21 done")


def move_alias(reg, name: str, champion: str, v2: str, reason: str) -> str:
    """v1 -> v2 by promotion, v2 -> v1 by rollback, both compare-and-set; returns the new champion."""
    if champion == "1":
        reg.promote(name, v2, expected_champion="1", reason=reason)
        return v2
    reg.rollback(name, to_version="1", reason=reason, expected_champion=champion)
    return "1"


def answered_by(logs: list[list], version: str, since: float) -> int:
    """Answers by `version` received after `since` (time.monotonic()), over every client."""
    return sum(1 for log in logs for entry in list(log) if entry[1] == version and entry[5] > since)


def request(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    return conn.getresponse().read()


def wait_for(predicate, what: str, server: services.Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert server.proc.poll() is None, f"serve exited:\n{server.tail()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{server.tail()}"
        time.sleep(0.1)
