"""`transferline serve` as a real process on loopback, following a real registry.

One server for the module, started on a champion trained by the real flow; the tests run in file order
and each leaves the registry as the next expects (v1 champion -> v2 promoted -> corrupted v3 refused).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.serving.conftest import model_name, offline_predictions, register_variant, registry

pytestmark = pytest.mark.pipeline

ROOT = Path(__file__).resolve().parents[2]
MAX_BODY, MAX_BATCH = 200_000, 150  # small limits, so the tests can exceed them cheaply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """A keep-alive HTTP client, like a real caller."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        data = response.read()
        if response.getheader("connection", "").lower() == "close":
            self.conn.close()
        return response.status, json.loads(data) if data and data[:1] in (b"{", b"[") else data

    def predict(self, texts: list) -> tuple[int, dict]:
        return self.call("POST", "/predict", json.dumps({"texts": texts}).encode())


@contextlib.contextmanager
def serving(project: Path, log: Path, *options: str) -> Iterator[dict]:
    """`transferline serve` on `project` as a real process on a free loopback port, until the block ends:
    {"port", "log", "proc"} once /health answers 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--project", str(project), "--port", str(port)]
    cmd += options
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"serve did not become healthy:\n{log.read_text()}"
            try:
                status, _ = Client(port).call("GET", "/health")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        yield {"port": port, "log": log, "proc": proc}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(champion_project: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    options = ("--poll-interval", "0.3", "--max-body-bytes", str(MAX_BODY), "--max-batch", str(MAX_BATCH))
    try:
        with serving(champion_project, log, *options) as started:
            yield started
    finally:
        # leave the registry as the session found it: v1 champion (batch-predict tests may run later)
        reg, name = registry(champion_project), model_name(champion_project)
        if reg.get_alias(name, "champion").version != "1":
            reg.rollback(name, to_version="1", reason="serving tests done")


def wait_for(predicate, what: str, server: dict, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{server['log'].read_text()[-3000:]}")


def test_served_predictions_equal_the_champions_offline_predictions(server, champion_project, tmp_path):
    test = pd.read_parquet(champion_project / "data" / "prepared" / "test.parquet")
    expected = offline_predictions(champion_project, "1", tmp_path / "eval")
    client = Client(server["port"])
    status, body = client.predict(test["text"].tolist())
    assert status == 200, body
    assert body["version"] == "1" and body["model"] == model_name(champion_project)
    assert [p["label"] for p in body["predictions"]] == expected
    for p in body["predictions"]:
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5
        assert p["score"] == max(p["probabilities"].values())
    status, version = client.call("GET", "/version")
    recorded = registry(champion_project).get_version(model_name(champion_project), "1").tags
    assert status == 200 and version["serving"]["weights_sha256"] == recorded["weights_sha256"]
    assert version["status"] == "ok" and version["refused"] is None


def test_bad_requests_get_4xx_and_the_service_stays_up(server):
    client = Client(server["port"])
    cases = [
        (b'{"texts": ["fine", ', 400),  # malformed JSON
        (b"\xff\xfe not utf-8", 400),
        (b'{"texts": [1, 2]}', 422),  # wrong types
        (b'{"texts": "one string"}', 422),
        (b'{"texts": []}', 422),
        (b'{"text": ["typo in the field name"]}', 422),
        (b'["a", "b"]', 422),
        (json.dumps({"texts": ["x"] * (MAX_BATCH + 1)}).encode(), 413),  # too many texts
        (json.dumps({"texts": ["y" * MAX_BODY]}).encode(), 413),  # too many bytes (Content-Length)
    ]
    for body, expected in cases:
        status, answer = client.call("POST", "/predict", body, {"Content-Type": "application/json"})
        assert status == expected, (body[:60], answer)
        assert "detail" in answer
        assert len(json.dumps(answer)) < 2000  # errors never echo a large input back
    # A chunked upload declares no length: the limit counts the bytes as they arrive.
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as raw:
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"z" * 65536
        raw.sendall(head + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n")
        assert raw.recv(64).startswith(b"HTTP/1.1 413")
    assert client.call("GET", "/predict")[0] == 405
    status, body = client.predict(["still answering after all that"])
    assert status == 200 and body["version"] == "1"
    assert client.call("GET", "/health")[0] == 200


def stream(port: int, texts: list[str], stop: threading.Event, log: list) -> None:
    """Send requests until stopped; record (status, version, labels) of each."""
    client = Client(port)
    while not stop.is_set():
        try:
            status, body = client.predict(texts)
            labels = [p["label"] for p in body["predictions"]] if status == 200 else None
            log.append((status, body.get("version") if status == 200 else body, labels))
        except Exception as err:  # a dropped connection is a failed request too
            log.append((None, repr(err), None))
            client = Client(port)


def test_promotion_during_a_stream_of_requests_fails_none_and_switches_version(
    server, champion_project, tmp_path
):
    from tasks.inference import Predictor

    name, reg = model_name(champion_project), registry(champion_project)
    v1_dir = champion_project / "models" / "challenger"  # the files of v1
    v2_dir = tmp_path / "v2"
    v2 = register_variant(champion_project, v1_dir, v2_dir, bias_shift=0.4)
    texts = pd.read_parquet(champion_project / "data" / "prepared" / "test.parquet")["text"].tolist()[:8]
    # offline predictions of both versions on exactly the batches the clients send
    expected = {v: Predictor(d, 48).predict(texts, 128) for v, d in (("1", v1_dir), (v2, v2_dir))}
    assert expected["1"] != expected[v2], "the variant must predict differently to show the swap"

    stop, logs = threading.Event(), [[], []]
    clients = [threading.Thread(target=stream, args=(server["port"], texts, stop, log)) for log in logs]
    for t in clients:
        t.start()
    try:
        wait_for(lambda: all(len(log) >= 5 for log in logs), "requests before the promotion", server)
        reg.promote(name, v2, expected_champion="1", reason="serving test: hot swap")
        wait_for(lambda: all(sum(r[1] == v2 for r in log) >= 10 for log in logs), f"v{v2} answers", server)
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=60)
    for log in logs:
        failed = [r for r in log if r[0] != 200]
        assert not failed, failed[:3]
        versions = [r[1] for r in log]
        switch = versions.index(v2)
        assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {v2}  # one switch, no flapping
        assert all(r[2] == expected[r[1]] for r in log)  # each answer is its version's offline prediction
    status = Client(server["port"]).call("GET", "/version")[1]
    assert status["version"] == v2 and status["champion_alias"] == v2 and status["status"] == "ok"


def test_a_corrupted_new_champion_is_refused_and_the_old_one_keeps_serving(
    server, champion_project, tmp_path
):
    name, reg = model_name(champion_project), registry(champion_project)
    serving = reg.get_alias(name, "champion").version
    v3 = register_variant(champion_project, champion_project / "models" / "challenger", tmp_path / "v3", -0.4)
    # flip bytes inside the weights where the MLflow artifact store keeps them (the header stays valid,
    # so only the hash check can notice)
    source = reg.client().get_model_version_download_uri(name, v3)
    assert source.startswith("file://"), source
    weights = Path(source.removeprefix("file://")) / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))

    reg.promote(name, v3, expected_champion=serving, reason="serving test: corrupted version")
    client = Client(server["port"])
    health = wait_for(
        lambda: (h := client.call("GET", "/health")[1]).get("refused") and h, f"v{v3} refused", server
    )
    assert health["status"] == "degraded" and health["version"] == serving
    assert health["refused"]["version"] == v3 and "sha256" in health["refused"]["error"]
    assert client.call("GET", "/health")[0] == 200  # still serving
    version = client.call("GET", "/version")[1]
    assert version["champion_alias"] == v3 and version["serving"]["version"] == serving
    status, body = client.predict(["a corrupted model never answers this"])
    assert status == 200 and body["version"] == serving
    assert f"refused {name} v{v3}" in server["log"].read_text()
    # the refused copy is not kept: a fixed artifact is downloaded afresh on the next try
    assert not (champion_project / ".cache" / "serving" / name / f"v{v3}").exists()
