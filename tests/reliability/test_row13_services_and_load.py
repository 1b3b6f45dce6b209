"""Exposed services (row 0, security), a corrupted champion (row 13) and load, for real on loopback.

- `transferline serve` (a real process on the session's `champion_project`): path traversal, odd methods,
  encodings, content types, smuggling-style headers and oversized or malformed bodies get a 4xx and never a
  file's content; after each one the service still answers /health and /predict. Serving has no auth by
  design (predictions and version metadata only; infra/ exposes nothing else of the host): what is tested
  is that nothing but its three routes is reachable. The plain bad-request cases are in
  tests/serving/test_serve.py::test_bad_requests_get_4xx_and_the_service_stays_up and are not repeated.
- Row 13: `champion` moved to a version whose weights fail their recorded sha256 is refused; v1 keeps
  answering every request meanwhile, and /health and /version say what was refused.
- Load: 8 client processes, TRANSFERLINE_LOAD_REQUESTS requests in total (default 1000), zero errors.
- MLflow with basic auth and Prefect with an auth string, started as infra/docker-compose.yml starts them.
  The static side (infra requires auth, has no default password, sets allowed hosts and the Prefect auth
  string) is tests/unit/test_infra.py::test_auth_is_on_and_each_service_has_its_own_database and
  ::test_every_variable_is_listed_in_env_example_and_secrets_are_required; not repeated here.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.reliability.ledger import Ledger
from tests.services import MLFLOW_SERVER_SETTINGS, log_tail, server_env
from tests.serving.conftest import model_name, register_dir, registry

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MAX_BODY, MAX_BATCH = 200_000, 150  # small limits, so the tests can exceed them cheaply
STARTUP_S = 120  # deadline for a server to answer its health check
# What a leaked file would contain: /etc/passwd, the repo's params.yaml (cwd of serve), an SQLite store.
LEAK_MARKERS = (b"root:", b"model_name", b"SQLite format 3")


# -- helpers -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout=60.0
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (a refused request may close it); the path is sent as given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send bytes no HTTP client would; return what came back until the server closed (b"" on a reset)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            pass  # a server dropping a malformed request is a refusal too
    return received


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start a server in its own process group, so that stop() also ends the workers it forks."""
    with log.open("w") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen) -> None:
    """TERM the server's process group, KILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_healthy(proc: subprocess.Popen, port: int, path: str, log: Path, what: str) -> None:
    deadline = time.monotonic() + STARTUP_S
    while True:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}:\n{log_tail(log)}"
        assert time.monotonic() < deadline, f"{what} not healthy after {STARTUP_S} s:\n{log_tail(log)}"
        with contextlib.suppress(OSError):
            if request(port, "GET", path, timeout=5)[0] == 200:
                return
        time.sleep(0.25)


def wait_for(predicate: Callable[[], object], what: str, log: Path, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log_tail(log)}")


def assert_refused(status: int, body: bytes, expected: set[int] | None = None, secret: bytes = b"") -> None:
    assert 400 <= status < 500, (status, body[:300])
    assert expected is None or status in expected, (status, expected, body[:300])
    for marker in (*LEAK_MARKERS, *((secret,) if secret else ())):
        assert marker not in body, f"{marker!r} leaked: {body[:300]!r}"


# -- MLflow with basic auth, as infra/docker-compose.yml runs it ---------------------------------------


def test_mlflow_server_requires_auth_and_refuses_traversal(tmp_path: Path, ledger: Ledger):
    port, log = free_port(), tmp_path / "mlflow.log"
    password = secrets.token_urlsafe(24)  # a fresh non-default password, like the one infra/.env holds
    sentinel = secrets.token_hex(16).encode()  # a file beside the artifact root that must stay unreadable
    (tmp_path / "secret.txt").write_bytes(sentinel)
    # As infra writes it at start-up: its own user-store database, the admin's name; the password comes
    # from MLFLOW_AUTH_ADMIN_PASSWORD (there is no default: without it the server refuses to start).
    ini = tmp_path / "basic_auth.ini"
    ini.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{tmp_path}/mlflow_auth.db\n"
        "admin_username = admin\n"
    )
    env = server_env(
        MLFLOW_AUTH_CONFIG_PATH=str(ini),
        MLFLOW_AUTH_ADMIN_PASSWORD=password,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32),
        **MLFLOW_SERVER_SETTINGS,
    )
    allowed = f"127.0.0.1:{port},localhost:{port},mlflow.example.internal:5000"  # as infra: names + ports
    cmd = [
        str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
        "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--artifacts-destination", str(tmp_path / "artifacts"), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--allowed-hosts", allowed,
        "--workers", "1",  # infra runs the default 4; one is enough to test and spares this 2-core box
    ]  # fmt: skip
    proc = start(cmd, log, env, tmp_path)
    try:
        wait_healthy(proc, port, "/health", log, "mlflow server")  # /health is open, as for a probe
        admin = basic("admin", password)
        search = "/api/2.0/mlflow/experiments/search?max_results=5"
        status, _, body = request(port, "GET", search, headers=admin)
        assert status == 200 and b'"Default"' in body, (status, body[:300], log_tail(log))

        for name, headers in [
            ("MLflow: no credentials", {}),
            ("MLflow: admin with a wrong password", basic("admin", password + "x")),
            ("MLflow: the old default admin/password1234", basic("admin", "password1234")),
            ("MLflow: Bearer scheme carrying the right password", {"Authorization": f"Bearer {password}"}),
        ]:
            with ledger.bad_input(0, f"{name} -> 401"):
                status, _, body = request(port, "GET", search, headers=headers)
                assert status == 401 and b"experiment" not in body, (status, body[:300])
        with ledger.bad_input(0, "MLflow: right credentials, Host header not in --allowed-hosts -> 403"):
            status, _, body = request(port, "GET", search, headers={**admin, "Host": "evil.example.com"})
            assert status == 403 and b"experiment" not in body, (status, body[:300])

        # A real run and artifact, so the artifact endpoints refuse traversal while they do work.
        create = json.dumps({"experiment_id": "0"}).encode()
        json_admin = {**admin, "Content-Type": "application/json"}
        status, _, body = request(port, "POST", "/api/2.0/mlflow/runs/create", create, json_admin)
        assert status == 200, (status, body[:300])
        run_id = json.loads(body)["run"]["info"]["run_id"]
        artifact = f"/api/2.0/mlflow-artifacts/artifacts/0/{run_id}/artifacts/hello.txt"
        assert request(port, "PUT", artifact, b"hello", admin)[0] == 200
        get = f"/get-artifact?run_uuid={run_id}&path="
        status, _, body = request(port, "GET", get + "hello.txt", headers=admin)
        assert (status, body) == (200, b"hello")
        with ledger.bad_input(0, "MLflow: artifact download without credentials -> 401"):
            status, _, body = request(port, "GET", get + "hello.txt")
            assert status == 401 and b"hello" not in body, (status, body[:300])

        up = "../" * 12  # far more levels than exist: reaches / from anywhere
        # the run's artifact root is <artifacts>/0/<run>/artifacts: four levels below tmp_path/secret.txt
        to_secret = "../../../../secret.txt"
        quoted = urllib.parse.quote(up + "etc/passwd", safe="")  # ..%2F..%2F...etc%2Fpasswd
        proxy = "/api/2.0/mlflow-artifacts/artifacts"  # the artifact proxy (--serve-artifacts)
        for name, path in [
            ("get-artifact path=../../../../secret.txt", get + to_secret),
            ("get-artifact path=..%2F...etc%2Fpasswd (encoded)", get + quoted),
            ("get-artifact path=/etc/passwd (absolute)", get + "/etc/passwd"),
            ("mlflow-artifacts/artifacts/%2e%2e%2fsecret.txt", f"{proxy}/%2e%2e%2fsecret.txt"),
            ("mlflow-artifacts/artifacts/0/..%2F...etc%2Fpasswd", f"{proxy}/0/{quoted}"),
            ("mlflow-artifacts/artifacts/../../etc/passwd (raw dots)", f"{proxy}/{up}etc/passwd"),
            ("mlflow-artifacts listing path=..", f"{proxy}?path=.."),
            ("artifacts/list path=../../..", f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path={up}"),
            ("model-versions/get-artifact path=../../etc/passwd",
             f"/model-versions/get-artifact?path={up}etc/passwd&name=m&version=1"),
        ]:  # fmt: skip
            with ledger.bad_input(0, f"MLflow traversal with valid credentials: {name} -> 4xx, no content"):
                status, _, body = request(port, "GET", path, headers=admin)
                assert_refused(status, body, secret=sentinel)
        assert request(port, "GET", "/health")[0] == 200, log_tail(log)  # still up after all of it
    finally:
        stop(proc)


# -- Prefect with an auth string, as infra/docker-compose.yml runs it ----------------------------------


def test_prefect_server_requires_its_auth_string(tmp_path: Path, ledger: Ledger):
    port, log = free_port(), tmp_path / "prefect.log"
    auth = f"admin:{secrets.token_urlsafe(24)}"
    env = server_env(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_API_AUTH_STRING=auth,  # the setting infra sets (prefect/settings/models/server/api.py)
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path}/prefect.db",
        PREFECT_SERVER_UI_ENABLED="false",
    )
    # --no-services: the auth check is middleware of the API app itself, the same with or without the
    # scheduler and other loops, which would only load this 2-core machine.
    cmd = [
        str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services",
    ]  # fmt: skip
    proc = start(cmd, log, env, tmp_path)
    try:
        # /api/health and /api/ready (GET) are open by design in Prefect 3.8 (probes); everything else is not
        wait_healthy(proc, port, "/api/health", log, "prefect server")
        user, password = auth.split(":", 1)
        flows = ("POST", "/api/flows/filter", b"{}")
        json_type = {"Content-Type": "application/json"}
        status, _, body = request(port, *flows, {**json_type, **basic(user, password)})
        assert (status, body) == (200, b"[]"), (status, body[:300], log_tail(log))

        for name, (method, path, payload), headers in [
            ("no credentials", flows, {}),
            ("a wrong password", flows, basic(user, password + "x")),
            ("a wrong user name", flows, basic("root", password)),
            ("the auth string with a trailing space", flows, basic(user, password + " ")),
            ("the auth string as a Bearer token", flows, {"Authorization": f"Bearer {auth}"}),
            ("the auth string unencoded", flows, {"Authorization": f"Basic {auth}"}),
            ("GET /api/admin/settings without credentials", ("GET", "/api/admin/settings", None), {}),
            ("a path ending in /health (not the probe)", ("GET", "/api/variables/name/health", None), {}),
            ("POST to the health probe", ("POST", "/api/health", b"{}"), {}),
            ("GET /api/health/../flows/filter (dots after the probe)",
             ("GET", "/api/health/../flows/filter", None), {}),
        ]:  # fmt: skip
            with ledger.bad_input(0, f"Prefect API: {name} -> 401"):
                status, _, body = request(port, method, path, payload, {**json_type, **headers})
                assert status == 401, (status, body[:300])
        # the API never hands its own auth string back, even to an authenticated caller
        status, _, body = request(port, "GET", "/api/admin/settings", headers=basic(user, password))
        assert status == 200 and password.encode() not in body, (status, body[:300])
    finally:
        stop(proc)


# -- `transferline serve` on the session's champion ----------------------------------------------------


@pytest.fixture(scope="module")
def serve(champion_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One serve process for the serving tests of this module; champion back on v1 when done."""
    reg, name = registry(champion_project), model_name(champion_project)
    assert reg.get_alias(name, "champion").version == "1", "the session's champion_project starts on v1"
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = [
        sys.executable, "-m", "flows.cli", "serve", "--project", str(champion_project), "--port", str(port),
        "--poll-interval", "0.5", "--max-body-bytes", str(MAX_BODY), "--max-batch", str(MAX_BATCH),
    ]  # fmt: skip
    # cwd is the repository: its params.yaml and mlflow.db are what the traversal payloads aim at
    proc = start(cmd, log, dict(os.environ), ROOT)
    try:
        wait_healthy(proc, port, "/health", log, "transferline serve")
        yield {"port": port, "log": log, "name": name}
    finally:
        stop(proc)
        if reg.get_alias(name, "champion").version != "1":
            reg.rollback(name, to_version="1", reason="reliability serving tests done")


def still_serving(server: dict) -> None:
    port = server["port"]
    status, _, body = request(port, "GET", "/health")
    assert status == 200, (status, body[:300], log_tail(server["log"]))
    status, _, body = request(port, "POST", "/predict", json.dumps({"texts": ["a fine film"]}).encode())
    assert status == 200 and json.loads(body)["version"] == "1", (status, body[:300], log_tail(server["log"]))


@pytest.mark.pipeline
def test_serve_refuses_traversal_odd_methods_and_malformed_requests(serve: dict, ledger: Ledger):
    port = serve["port"]
    good = json.dumps({"texts": ["a good film"]}).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    boundary = "----x"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="texts"\r\n\r\nhello\r\n--{boundary}--\r\n'
    ).encode()
    xxe = b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]><texts>&x;</texts>'
    # (what, method, path, body, headers, expected statuses: None = any 4xx)
    cases: list[tuple[str, str, str, bytes | None, dict, set[int] | None]] = [
        ("GET /../../etc/passwd", "GET", "/../../etc/passwd", None, {}, None),
        ("GET /%2e%2e%2f%2e%2e%2fetc/passwd", "GET", "/%2e%2e%2f%2e%2e%2fetc/passwd", None, {}, None),
        ("GET /predict/..%2f..%2fparams.yaml", "GET", "/predict/..%2f..%2fparams.yaml", None, {}, None),
        ("GET /version/../../mlflow.db", "GET", "/version/../../mlflow.db", None, {}, None),
        ("GET /health/..%2f x6 etc%2fpasswd", "GET", "/health/" + "..%2f" * 6 + "etc%2fpasswd", None, {},
         None),
        ("GET //etc/passwd", "GET", "//etc/passwd", None, {}, None),
        ("GET /..\\..\\params.yaml (backslashes)", "GET", "/..\\..\\params.yaml", None, {}, None),
        ("GET /%c0%ae%c0%ae/params.yaml (overlong UTF-8 dots)", "GET", "/%c0%ae%c0%ae/params.yaml", None,
         {}, None),
        ("GET /predict%00/../params.yaml (NUL)", "GET", "/predict%00/../params.yaml", None, {}, None),
        ("POST /predict/../../etc/passwd with a valid body", "POST", "/predict/../../etc/passwd", good, {},
         None),
        ("DELETE /predict", "DELETE", "/predict", None, {}, {405}),
        ("PUT /version", "PUT", "/version", good, {}, {405}),
        ("TRACE /health", "TRACE", "/health", None, {}, {405}),
        ("OPTIONS /predict (CORS preflight from another origin)", "OPTIONS", "/predict", None,
         {"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"}, {405}),
        ("Content-Length: 10^12 declared", "POST", "/predict", good, {"Content-Length": str(10**12)}, {413}),
        ("a body of --max-body-bytes + 1", "POST", "/predict",
         json.dumps({"texts": ["z" * (MAX_BODY - 11)]}).encode()[: MAX_BODY + 1], {}, {413}),
        ("one text larger than --max-body-bytes", "POST", "/predict",
         json.dumps({"texts": ["w " * MAX_BODY]}).encode(), {}, {413}),
        (f"{MAX_BATCH + 1} texts (over --max-batch)", "POST", "/predict",
         json.dumps({"texts": ["t"] * (MAX_BATCH + 1)}).encode(), {}, {413}),
        ("100 000 nested arrays", "POST", "/predict", b"[" * 100_000, {}, {400}),
        ("texts nested 100 000 deep", "POST", "/predict", b'{"texts": ' + b"[" * 100_000, {}, {400}),
        ("a 5000-digit integer", "POST", "/predict", b'{"texts": ' + b"9" * 5000 + b"}", {}, {400}),
        ("texts: [[\"nested\"]]", "POST", "/predict", b'{"texts": [["nested"]]}', {}, {422}),
        ("texts: [null]", "POST", "/predict", b'{"texts": [null]}', {}, {422}),
        ("texts: null", "POST", "/predict", b'{"texts": null}', {}, {422}),
        ("body: null", "POST", "/predict", b"null", {}, {422}),
        ("body: {} (texts missing)", "POST", "/predict", b"{}", {}, {422}),
        ("texts: [{\"$gt\": \"\"}] (an object for a string)", "POST", "/predict",
         b'{"texts": [{"$gt": ""}]}', {}, {422}),
        ("an extra key (__proto__)", "POST", "/predict", b'{"texts": ["a"], "__proto__": {"x": 1}}', {},
         {422}),
        ("a lone surrogate \\ud800 in a text", "POST", "/predict", b'{"texts": ["ok", "\\ud800 x"]}', {},
         {422}),
        ("non-UTF-8 bytes inside a text", "POST", "/predict", b'{"texts": ["caf\xe9 \xff"]}', {}, {400}),
        ("a form-encoded body", "POST", "/predict", b"texts=a&texts=b", form, {400}),
        ("a multipart body", "POST", "/predict", multipart,
         {"Content-Type": f"multipart/form-data; boundary={boundary}"}, {400}),
        ("an XML body with an external entity", "POST", "/predict", xxe, {"Content-Type": "application/xml"},
         {400}),
    ]  # fmt: skip
    for what, method, path, body, headers, expected in cases:
        with ledger.bad_input(0, f"serve: {what} -> {sorted(expected) if expected else '4xx'}"):
            status, answer_headers, answer = request(port, method, path, body, headers)
            assert_refused(status, answer, expected)
            assert len(answer) < 2000, answer[:300]  # an error never echoes a large input back
            assert "access-control-allow-origin" not in answer_headers  # no CORS: browsers can't read it
            still_serving(serve)

    # (what, bytes sent in one write, whether a 400 answer is required rather than a 4xx or a drop)
    raw_cases = [
        # uvicorn answers a malformed header with 400 and closes at once; http.client writes the body
        # after the headers, and a body that lands on the closed socket resets the connection before
        # the answer is read (about 1 request in 10), so this request goes in a single write
        ("Content-Length: 12abc",
         b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n" + good, True),
        ("two conflicting Content-Length headers (smuggling)",
         b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\n" + good,
         False),
        # h11 caps a header block it has to buffer at 16 KB; one that arrives in a single read (up to
        # ~64-256 KB) is accepted, which bounds it all the same
        ("a 1 MB header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 1_000_000 + b"\r\n\r\n",
         False),
        ("a garbage request line", b"GET /../../etc/passwd HTTP/9.9 junk\r\n\r\n", False),
        ("a request without a method", b"/etc/passwd\r\n\r\n", False),
    ]  # fmt: skip
    for what, data, answered in raw_cases:
        with ledger.bad_input(0, f"serve: {what} -> {'400' if answered else '400 or connection dropped'}"):
            answer = raw_exchange(port, data)
            if answered:
                assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
            # the server may drop such a connection instead of answering: either way nothing is served
            if answer:
                status_line = answer.split(b"\r\n", 1)[0]
                assert status_line.startswith(b"HTTP/1.1 4"), answer[:300]
            assert not any(marker in answer for marker in LEAK_MARKERS), answer[:300]
            still_serving(serve)

    # Not a refusal but the other side of the limit: a large text that fits is answered from its first
    # max_length tokens, quickly, with a small response.
    big = json.dumps({"texts": [("a long review " * MAX_BODY)[: MAX_BODY - 100]]}).encode()
    started = time.monotonic()
    status, _, answer = request(port, "POST", "/predict", big)
    assert status == 200 and len(answer) < 2000, (status, answer[:300])
    print(f"a {len(big) // 1000} KB single text answered in {time.monotonic() - started:.2f} s")


# -- row 13: a champion whose weights fail their recorded hash -----------------------------------------


def register_corrupted(project: Path, source_dir: Path, dest: Path) -> str:
    """Register v1's files as a new version, tagged with their hashes as the flow tags them, but with one
    byte of model.safetensors flipped after hashing (bit rot or tampering between hashing and upload)."""
    from tasks.promote import model_files_sha256

    shutil.copytree(source_dir, dest)
    files = model_files_sha256(dest)
    weights = dest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data: the header stays valid, the file still loads
    weights.write_bytes(bytes(data))
    return register_dir(project, dest, files, "reliability-row13")


def stream(port: int, stop_event: threading.Event, log: list) -> None:
    """POST /predict on one keep-alive connection until stopped; log (status, version or error)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"texts": ["a corrupted model must never answer this"]}).encode()
    while not stop_event.is_set():
        try:
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            answer = json.loads(data).get("version") if response.status == 200 else data
            log.append((response.status, answer))
        except Exception as err:  # a dropped connection is a failed request too
            log.append((None, repr(err)))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.close()


@pytest.mark.pipeline
def test_row13_a_champion_failing_its_weights_hash_is_refused_and_v1_keeps_serving(
    serve: dict, champion_project: Path, tmp_path: Path, ledger: Ledger
):
    port, name, reg = serve["port"], serve["name"], registry(champion_project)
    stop_event, logs = threading.Event(), [[], []]
    clients = [threading.Thread(target=stream, args=(port, stop_event, log)) for log in logs]
    version = None
    with ledger.fault(13, "champion moved to a version whose model.safetensors fails its recorded sha256"):
        try:
            for t in clients:
                t.start()
            version = register_corrupted(champion_project, champion_project / "models" / "challenger",
                                         tmp_path / "corrupted")  # fmt: skip
            # the fault is really there: the stored weights are not what the version's tag says
            stored = reg.client().get_model_version_download_uri(name, version)
            assert stored.startswith("file://"), stored
            digest = hashlib.sha256(
                (Path(stored.removeprefix("file://")) / "model" / "model.safetensors").read_bytes()
            ).hexdigest()
            assert digest != reg.get_version(name, version).tags["weights_sha256"]

            reg.promote(name, version, expected_champion="1", reason="reliability row 13: corrupted weights")

            def refused() -> dict | None:
                health = json.loads(request(port, "GET", "/health")[2])
                return health if (health.get("refused") or {}).get("version") == version else None

            health = wait_for(refused, f"v{version} refused", serve["log"])
            assert health["status"] == "degraded" and health["version"] == "1", health
            assert "sha256" in health["refused"]["error"], health
            status, _, body = request(port, "GET", "/version")
            served = json.loads(body)
            assert status == 200 and served["champion_alias"] == version, served
            assert served["serving"]["version"] == "1" and served["refused"]["version"] == version, served
            assert f"refused {name} v{version}" in serve["log"].read_text()
            # requests keep coming after the refusal too, and all of them are answered by v1
            after = [len(log) for log in logs]
            wait_for(lambda: all(len(log) >= n + 10 for log, n in zip(logs, after, strict=True)),
                     "requests after the refusal", serve["log"])  # fmt: skip
        finally:
            stop_event.set()
            for t in clients:
                t.join(timeout=60)
            if reg.get_alias(name, "champion").version != "1":
                reg.rollback(name, to_version="1", reason="reliability row 13 done")
        answers = [entry for log in logs for entry in log]
        failed = [entry for entry in answers if entry[0] != 200]
        assert answers and not failed, failed[:3]
        assert {entry[1] for entry in answers} == {"1"}  # never the corrupted version
        print(f"row 13: {len(answers)} requests during the refusal, 0 failed, all answered by v1")
    # the alias is back on what is served: the refusal is no longer reported
    back = lambda: json.loads(request(port, "GET", "/health")[2])["status"] == "ok"  # noqa: E731
    wait_for(back, "status ok after the rollback", serve["log"])


# -- load ----------------------------------------------------------------------------------------------

# One client process: a keep-alive connection, `count` requests of one text each, then its latencies and
# errors as JSON on stdout. Standard library only, so the 8 processes start in a blink.
LOAD_CLIENT = r"""
import http.client, json, sys, time
port, count, offset, start_at = (int(a) for a in sys.argv[1:5])
texts = json.load(open(sys.argv[5]))
def connect():
    return http.client.HTTPConnection("127.0.0.1", port, timeout=60)
conn, latencies, errors = connect(), [], []
time.sleep(max(0.0, start_at - time.time()))  # all clients begin together
began = time.time()
for i in range(count):
    body = json.dumps({"texts": [texts[(offset + i) % len(texts)]]}).encode()
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        latencies.append((time.perf_counter() - t0) * 1000)
        answer = json.loads(data) if response.status == 200 else None
        if answer is None or answer["version"] != "1" or len(answer["predictions"]) != 1:
            errors.append(f"{response.status}: {data[:200]!r}")
    except Exception as err:
        errors.append(repr(err))
        conn.close()
        conn = connect()
print(json.dumps({"latencies_ms": latencies, "errors": len(errors), "examples": errors[:3],
                  "began": began, "ended": time.time()}))
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@pytest.mark.pipeline
def test_load_8_client_processes_get_zero_errors(
    serve: dict, champion_project: Path, tmp_path: Path, ledger: Ledger
):
    total = int(os.environ.get("TRANSFERLINE_LOAD_REQUESTS") or 1000)
    clients = 8
    texts = pd.read_parquet(champion_project / "data" / "prepared" / "test.parquet")["text"].tolist()
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts))
    counts = [total // clients + (i < total % clients) for i in range(clients)]
    start_at = int(time.time()) + 2  # time for 8 interpreters to start before the first request
    load_before = os.getloadavg()
    procs = []
    for i, n in enumerate(counts):
        argv = [str(serve["port"]), str(n), str(i * 7), str(start_at), str(texts_file)]
        cmd = [sys.executable, "-c", LOAD_CLIENT, *argv]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    deadline = time.monotonic() + 60 + 0.05 * total  # a hang fails the test instead of blocking the suite
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, err[-2000:]
            results.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    latencies = [ms for r in results for ms in r["latencies_ms"]]
    errors = sum(r["errors"] for r in results)
    seconds = max(r["ended"] for r in results) - min(r["began"] for r in results)
    p50, p99 = round(percentile(latencies, 0.50), 1), round(percentile(latencies, 0.99), 1)
    ledger.figure(0, load_requests=total, load_errors=errors, load_p50_ms=p50, load_p99_ms=p99)
    print(
        f"load: {total} requests from {clients} client processes, {errors} errors, p50 {p50} ms, "
        f"p99 {p99} ms, {total / seconds:.0f} req/s over {seconds:.1f} s; load average "
        f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after, {os.cpu_count()} CPUs"
    )
    assert errors == 0, [e for r in results for e in r["examples"]][:5]
    assert len(latencies) == total
    still_serving(serve)
