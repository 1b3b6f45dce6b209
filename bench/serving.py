"""Benchmark: `transferline serve` over HTTP vs a plain in-process transformers.pipeline on one model.

Run from the project root: ``python bench/serving.py`` (trains a tiny champion in a temporary project with
the real retrain flow, ~1 min) or ``python bench/serving.py --project DIR`` (serves DIR's champion). Not a
test: it prints a table and ends with one JSON line
``{"p50_ms": ..., "p99_ms": ..., "batch_speedup_vs_pipeline": ...}``.

What is timed, in one run on this machine:

* latency: one text per HTTP request, sent one after another on a keep-alive connection by a client in a
  second process on loopback; end to end (JSON encoding, HTTP, tokenising, the model, the response). The
  baseline is one text per call of ``transformers.pipeline("text-classification")`` in-process on the
  champion's files (no HTTP at all).
* batch throughput: the same client sends the texts in requests of --request-texts texts; the baseline is
  ``pipeline(texts, batch_size=32, truncation=True)`` in-process (without truncation a review longer than
  512 tokens crashes it). Each side makes --repeats passes over the texts, the sides alternating pass by
  pass so that both see the same phases of a shared machine, and each side's fastest pass counts (as with
  timeit: the slower passes measure the neighbours). batch_speedup_vs_pipeline =
  served texts/s over pipeline texts/s.

The service and the pipeline take turns, never scoring at the same time. The texts are
rotten-tomatoes sample reviews (the tiny champion's training source) that fit its trained max length, at
most --texts of them, so both sides score the same tokens.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# -- the client (second process) ---------------------------------------------------------------------------
def client(port: int, texts_file: Path, per_request: int, warmup: int, phase: str) -> None:
    """`single`: send the texts one per request; `batch`: one pass in requests of `per_request`. Prints
    one JSON object of timings."""
    texts = json.loads(texts_file.read_text())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(batch: list[str]) -> dict:
        conn.request("POST", "/predict", json.dumps({"texts": batch}), {"Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"HTTP {response.status}: {body[:300]!r}")
        return json.loads(body)

    if phase == "batch":
        post(texts[:per_request])  # warm the large shapes
        started = time.perf_counter()
        for i in range(0, len(texts), per_request):
            post(texts[i : i + per_request])
        print(json.dumps({"batch_s": time.perf_counter() - started}))
        return
    for text in texts[:warmup]:
        post([text])
    single_ms, labels = [], []
    for text in texts:
        started = time.perf_counter()
        answer = post([text])
        single_ms.append((time.perf_counter() - started) * 1000)
        labels.append(answer["predictions"][0]["label"])
    conn.request("GET", "/version")
    precision = json.loads(conn.getresponse().read())["serving"]["precision"]
    print(json.dumps({"single_ms": single_ms, "labels": labels, "precision": precision}))


# -- the run -----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_champion(base: Path) -> Path:
    """A temporary project with a champion trained by the real retrain flow on the tiny parameters."""
    from tasks.runtime import configure_environment

    # Before Prefect is imported: it reads its home and settings once.
    os.environ["PREFECT_HOME"] = str(base / "prefect-home")
    os.environ.pop("PREFECT_API_URL", None)
    configure_environment()
    from flows.retrain import retrain
    from tests.conftest import make_project

    project = make_project(base)
    print("training a tiny champion with the retrain flow ...", file=sys.stderr, flush=True)
    summary = retrain(project_dir=str(project))
    print(f"champion: v{summary.version} (test accuracy {summary.test_accuracy:.3f})", file=sys.stderr)
    return project


def sample_texts(model_dir: Path, n: int, max_length: int) -> list[str]:
    """Up to n sample reviews of at most max_length tokens (the champion's trained length): both sides
    then see exactly the same tokens, so truncation plays no part in the comparison."""
    import pandas as pd
    from transformers import AutoTokenizer

    from tasks.kinds.text_sources import resolve_source

    path, _ = resolve_source("sample://rotten-tomatoes", ROOT)
    texts = pd.read_csv(path, dtype=str, keep_default_na=False)["text"]
    texts = texts[texts.str.strip() != ""].drop_duplicates().sample(frac=1.0, random_state=0).tolist()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    return [t for t, k in zip(texts, lengths, strict=True) if k <= max_length][:n]


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"transferline serve exited:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"transferline serve did not become healthy:\n{log.read_text()[-3000:]}")


def pipeline_single(model_dir: Path, texts: list[str], warmup: int) -> tuple[Any, list[float], list[str]]:
    """(the pipeline, per-text latencies in ms, labels) of a plain transformers pipeline in-process."""
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    pipe = pipeline("text-classification", model=str(model_dir), device="cpu")
    for text in texts[:warmup]:
        pipe(text, truncation=True)
    single_ms, labels = [], []
    for text in texts:
        started = time.perf_counter()
        labels.append(pipe(text, truncation=True)[0]["label"])
        single_ms.append((time.perf_counter() - started) * 1000)
    pipe(texts[:64], batch_size=32, truncation=True)  # warm the batch shapes
    return pipe, single_ms, labels


def pipeline_batch_s(pipe: Any, texts: list[str]) -> float:
    started = time.perf_counter()
    pipe(texts, batch_size=32, truncation=True)
    return time.perf_counter() - started


@dataclass(frozen=True)
class Measured:
    """What one run timed: the served side (over HTTP) and the in-process pipeline, on the same texts."""

    texts: list[str]
    max_length: int  # the champion's trained length, as the service reports it
    served: dict  # the `single` client's output: single_ms, labels, precision
    pipe_ms: list[float]
    pipe_labels: list[str]
    served_batch_s: float  # fastest pass of each side
    pipe_batch_s: float


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, help="serve this project's champion (default: train one)")
    parser.add_argument("--texts", type=int, default=1000, help="texts to send (default: 1000)")
    parser.add_argument(
        "--request-texts", type=int, default=256, help="texts per batch request (default: 256)"
    )
    parser.add_argument("--warmup", type=int, default=30, help="untimed requests first (default: 30)")
    parser.add_argument(
        "--repeats", type=int, default=3,
        help="batch passes per side, alternating; the fastest counts, as with timeit (default: 3)",
    )  # fmt: skip
    parser.add_argument("--client", nargs=2, metavar=("PORT", "TEXTS_FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("single", "batch"), default="single", help=argparse.SUPPRESS)
    return parser.parse_args()


def run_client(args: argparse.Namespace, port: int, texts_file: Path, phase: str) -> dict:
    """One `client` phase in a second process; its JSON timings."""
    measured = subprocess.run(
        [sys.executable, __file__, "--client", str(port), str(texts_file), "--request-texts",
         str(args.request_texts), "--warmup", str(args.warmup), "--phase", phase],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(measured.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, project: Path, model_dir: Path, tmp: Path) -> Measured:
    """Start `transferline serve` on `project`, time it and the pipeline on `model_dir`, stop it."""
    port, log = free_port(), tmp / "serve.log"
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--project", str(project), "--port", str(port),
           "--poll-interval", "3600", "--max-batch", str(max(args.request_texts, 256))]  # fmt: skip
    with log.open("w") as out:
        server = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, server, log)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/version")
        max_length = json.loads(conn.getresponse().read())["serving"]["max_length"]
        texts = sample_texts(model_dir, args.texts, max_length)
        texts_file = tmp / "texts.json"
        texts_file.write_text(json.dumps(texts))
        served = run_client(args, port, texts_file, "single")
        pipe, pipe_ms, pipe_labels = pipeline_single(model_dir, texts, args.warmup)
        # The sides alternate, pass by pass, so that both see the same phases of a shared machine.
        served_batch_s = pipe_batch_s = math.inf
        for _ in range(args.repeats):
            served_batch_s = min(served_batch_s, run_client(args, port, texts_file, "batch")["batch_s"])
            pipe_batch_s = min(pipe_batch_s, pipeline_batch_s(pipe, texts))
    finally:
        server.terminate()
        server.wait(timeout=60)
    return Measured(texts, max_length, served, pipe_ms, pipe_labels, served_batch_s, pipe_batch_s)


def report(args: argparse.Namespace, name: str, version: str, m: Measured) -> None:
    """The comparison table, then the one-line JSON result."""
    import numpy as np

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q))

    n = len(m.texts)
    served_tps, pipe_tps = n / m.served_batch_s, n / m.pipe_batch_s
    agree = sum(a == b for a, b in zip(m.served["labels"], m.pipe_labels, strict=True)) / n
    result = {
        "p50_ms": round(pct(m.served["single_ms"], 50), 2),
        "p99_ms": round(pct(m.served["single_ms"], 99), 2),
        "batch_speedup_vs_pipeline": round(served_tps / pipe_tps, 2),
    }
    rows = [
        ("one text per request: p50 ms", pct(m.served["single_ms"], 50), pct(m.pipe_ms, 50)),
        ("one text per request: p99 ms", pct(m.served["single_ms"], 99), pct(m.pipe_ms, 99)),
        (f"batch: texts/s ({args.request_texts}/request vs batch_size=32)", served_tps, pipe_tps),
    ]
    print(
        f"\n{name} v{version} on {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}; {n} sample "
        f"reviews of at most {m.max_length} tokens"
    )
    print(f"{'':<52} {'serve (HTTP)':>14} {'pipeline':>10} {'ratio':>7}")
    for label, ours, base in rows:
        print(
            f"{label:<52} {ours:>14.2f} {base:>10.2f} {base / ours if 'ms' in label else ours / base:>6.2f}x"
        )
    print(f"label agreement with the pipeline: {agree:.3f} (serve uses the offline evaluation's precision,")
    print(f"here {m.served['precision']}; the pipeline runs fp32)")
    print(json.dumps(result))


def main() -> None:
    args = parse_args()
    if args.client:
        client(int(args.client[0]), Path(args.client[1]), args.request_texts, args.warmup, args.phase)
        return

    from tasks.config import load_config
    from tasks.paths import ProjectPaths
    from tasks.registry import Registry

    tmp = Path(tempfile.mkdtemp(prefix="transferline-bench-serving-"))
    project = args.project.resolve() if args.project else build_champion(tmp)
    paths = ProjectPaths.at(project)
    name = load_config(paths.params).registry.model_name
    version = Registry.for_project(paths).get_alias(name, "champion").version
    model_dir = paths.serving_cache / name / f"v{version}"  # what the service verifies and loads
    measured = measure(args, project, model_dir, tmp)
    shutil.rmtree(tmp, ignore_errors=True)  # the temporary project, texts and server log
    report(args, name, version, measured)


if __name__ == "__main__":
    main()
