"""MLflow's own scoring server serves the champion (`mlflow models serve -m models:/<name>@champion`)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.serving.conftest import model_name, offline_predictions

pytestmark = pytest.mark.pipeline


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_with_the_champions_labels(champion_project: Path, tmp_path: Path):
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{champion_project / 'mlflow.db'}",
        # --env-manager local starts uvicorn from PATH: this interpreter's environment, as `source` would
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    uri = f"models:/{model_name(champion_project)}@champion"
    cmd = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
        "-p", str(port), "-h", "127.0.0.1", "--env-manager", "local",
    ]  # fmt: skip
    log = tmp_path / "mlflow-serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=champion_project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    test = pd.read_parquet(champion_project / "data" / "prepared" / "test.parquet").head(40)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"mlflow models serve exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"mlflow models serve did not start:\n{log.read_text()[-3000:]}"
            )
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        body = json.dumps({"inputs": test["text"].tolist()})
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200, answer
        labels = [p["label"] for p in answer["predictions"]]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    # the pipeline truncates at 512 tokens, not the trained max length: boundary texts may differ
    offline = offline_predictions(champion_project, "1", tmp_path / "offline")[:40]
    agree = sum(a == b for a, b in zip(labels, offline, strict=True))
    assert set(labels) <= {"fresh", "rotten"} and agree >= 36, (labels, offline)
