"""Benchmark: transferline on the scale-out set-up of infra/, on loopback.

Run from the project root: ``python bench/scaleout.py`` (``--races 6 --pg-races 2 --runs 2 --requests
400`` for a quick look). Not a test: it prints a table and ends with one JSON line ``{"race_trials",
"race_trials_with_one_winner", "ledger_mismatches", "same_folder_runs", "same_folder_runs_interleaved",
"serve_clients", "serve_p50_ms", "serve_p99_ms", "serve_throughput_vs_one_at_a_time",
"serve_forward_ms_one_text", "serve_forward_ms_full_pass", "serve_batching_gain_bound"}``.

It starts PostgreSQL (Debian's binaries, tests/pgserver.py), an ``mlflow server`` on it and a Prefect server
on it (tests/services.py), then:

1. races: two project checkouts (two folders, one racer process each: two machines) take the same instant
   to promote, or to promote against a rollback, against one registered model behind the tracking server;
   their alias lock is the Prefect server's global concurrency limit of the model. ``--pg-races`` more
   races with the checkouts on the PostgreSQL store directly (its advisory lock). Each race is judged by
   tests/reliability/races.py: one winner, the loser told which move won and by whom, the ledger recording
   the winner's moves and agreeing with the aliases (``ledger_mismatches`` counts races where it did not).
2. same-folder runs: in one project folder (tracking server and Prefect server as above), one
   ``transferline run`` is SIGKILLed while it holds the folder, then ``--runs`` runs start at once, each
   allowed to wait. A run works from its first line (printed once it holds the folder) to its final line
   (printed before it lets go); ``same_folder_runs_interleaved`` counts runs whose working time overlaps
   another's. The first run trains and promotes; the others find that champion trained on their inputs.
3. serving: the champion of step 2 served by ``transferline serve`` twice, with dynamic batching (its
   defaults) and one request at a time (``--batch-requests 1``, the service before batching), each loaded
   by ``--clients`` closed-loop clients (threads of a second process, one sample review per request,
   keep-alive connections) for ``--requests`` requests; ``serve_p50_ms``/``serve_p99_ms`` are the batched
   service's, ``serve_throughput_vs_one_at_a_time`` = its requests/s over the one-at-a-time service's.
4. the floor under the serving goals on this machine: the served model's forward passes alone, timed in
   this process on the clients' texts (``serve_forward_ms_one_text``; ``serve_forward_ms_full_pass`` for
   ``--clients`` texts in one pass, which no batched service answers sooner; ``serve_batching_gain_bound``
   = ``--clients`` single passes over one full pass, the most batching can multiply throughput by).

Goals: every race one winner, ``ledger_mismatches`` 0, ``same_folder_runs_interleaved`` 0, and with 8
clients ``serve_p99_ms`` <= 30 and ``serve_throughput_vs_one_at_a_time`` >= 3.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = "scaleout-bench"  # the same-folder runs' registered model (the races use the checkouts' own)
DONE = ("is now 'champion'", "was already 'champion'")  # a run's final line, printed before it lets go


# -- the load client (second process) ----------------------------------------------------------------------
def client(port: int, texts_file: Path, clients: int, requests: int, warmup: int) -> None:
    """`clients` threads, each a closed loop of one-text requests on its own keep-alive connection; prints
    one JSON object with the latencies (ms) and the wall time of the measured part."""
    texts = json.loads(texts_file.read_text())
    barrier = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []

    def loop(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        for n in range(warmup + requests // clients):
            if n == warmup:
                barrier.wait()
            body = json.dumps({"texts": [texts[(i * 131 + n) % len(texts)]]})
            started = time.perf_counter()
            conn.request("POST", "/predict", body, headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors.append(str(response.status))
            if n >= warmup:
                latencies[i].append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {"latencies_ms": [x for xs in latencies for x in xs], "seconds": seconds, "errors": errors}
        )
    )


# -- services ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def scale_out(base: Path) -> Iterator[dict]:
    """PostgreSQL, an MLflow server and a Prefect server on it; stopped when the block ends."""
    from tests import pgserver, services

    pg = pgserver.start()
    started: list = []
    try:
        store = pg.createdb("mlflow")
        prefect_db = pg.createdb("prefect").replace("postgresql://", "postgresql+asyncpg://")
        print("starting the Prefect and MLflow servers ...", file=sys.stderr, flush=True)
        started.append(services.launch_prefect(prefect_db, base / "prefect"))  # both migrate at once
        started.append(services.launch_mlflow(store, base / "mlflow"))
        prefect, mlflow = (server.ready() for server in started)
        yield {"store": store, "tracking": mlflow.url(), "prefect_api": prefect.url("/api")}
    finally:
        for server in started:
            server.stop()
        pg.stop()


# -- 1. races ----------------------------------------------------------------------------------------------
def races(base: Path, tracking_uri: str, prefect_api: str | None, trials: int, label: str) -> dict:
    """`trials` races between two fresh checkouts on `tracking_uri`; counts and timings."""
    from tasks.config import load_config
    from tasks.registry import Registry
    from tests.reliability.races import (
        checkout,
        race,
        register_versions,
        scale_out_env,
        start_racer,
        wait_ready,
    )

    checkouts = [checkout(base / f"{label}-{name}") for name in ("machine-a", "machine-b")]
    # one registered model per backend (both share the PostgreSQL database)
    model = f"{load_config(checkouts[0] / 'params.yaml').registry.model_name}-{label}"
    env = scale_out_env(tracking_uri, prefect_api)
    racers = [
        start_racer(f"racer-{n}", c, env, base / f"{label}-racer-{n}.log")
        for n, c in zip("ab", checkouts, strict=True)
    ]
    registry = Registry(tracking_uri, None)
    versions = register_versions(tracking_uri, model, 1 + 2 * trials, base)
    one_winner = mismatches = 0
    seconds: list[float] = []
    try:
        wait_ready(racers)
        racers[0].send({"op": "promote", "version": versions[0], "expected": None, "at": 0, "model": model,
                        "reason": "setup"})  # fmt: skip
        setup = racers[0].receive()
        assert setup["outcome"] == "won", setup
        for trial in range(trials):
            try:
                result = race(registry, model, racers, trial, versions[1 + 2 * trial : 3 + 2 * trial])
            except AssertionError as err:
                print(f"{label} race {trial}: {err}", file=sys.stderr)
                continue
            one_winner += 1
            mismatches += not result.ledger_ok
            seconds.append(result.seconds)
    finally:
        for racer in racers:
            racer.stop()
    return {"trials": trials, "one_winner": one_winner, "ledger_mismatches": mismatches, "seconds": seconds}


# -- 2. same-folder runs -----------------------------------------------------------------------------------
def same_folder_runs(base: Path, env: dict[str, str], runs: int) -> tuple[Path, dict]:
    """A killed holder, then `runs` runs started together in one folder; returns the folder and counts."""
    from tests.conftest import QUICK, make_project
    from tests.services import RunProcess

    project = make_project(base / "workspace", QUICK)
    options = ("--set", f"registry.model_name={MODEL}", "--set", "ops.run_lock_wait_s=3600")
    killed = RunProcess(project, *options, env=env)
    holder = project / ".cache" / "run.lock"
    deadline = time.monotonic() + 300
    while str(killed.proc.pid) not in (holder.read_text() if holder.exists() else ""):
        assert time.monotonic() < deadline and killed.ended is None, killed.text()
        time.sleep(0.1)
    killed.kill()
    killed.wait(60)
    print(
        f"killed the holder of {project} (pid {killed.proc.pid}); starting {runs} runs ...", file=sys.stderr
    )
    started = [RunProcess(project, *options, env=env) for _ in range(runs)]
    codes = [run.wait(1800) for run in started]
    spans = []
    for run, code in zip(started, codes, strict=True):
        end = next((at for at, line in run.lines if any(d in line for d in DONE)), None)
        begin = run.first("transferline: retraining")
        if code != 0 or begin is None or end is None:
            print(f"run {run.proc.pid} failed ({code}):\n{run.text()[-3000:]}", file=sys.stderr)
            continue
        spans.append((begin, end))
    interleaved = sum(
        1
        for i, (b, e) in enumerate(spans)
        if any(b2 < e and b < e2 for j, (b2, e2) in enumerate(spans) if j != i)
    )
    took_over = sum("ended without releasing it" in run.text() for run in started)
    work_s = [round(e - b, 1) for b, e in sorted(spans)]
    counts = {"runs": runs, "completed": len(spans), "interleaved": interleaved, "took_over": took_over}
    return project, {**counts, "work_s": work_s}


# -- 3. serving --------------------------------------------------------------------------------------------
def serve_load(args: argparse.Namespace, project: Path, env: dict[str, str], base: Path) -> dict:
    """The champion served batched and one request at a time, each under the same closed-loop load."""
    import pandas as pd

    from tests import services

    texts = pd.read_parquet(project / "data" / "prepared" / "test.parquet")["text"].tolist()
    texts_file = base / "texts.json"
    texts_file.write_text(json.dumps(texts))
    measured = {}
    for name, options in (("one at a time", ["--batch-requests", "1"]), ("batched", [])):
        server = services.start_serve(
            project, base / f"serve-{len(measured)}.log", "--set", f"registry.model_name={MODEL}",
            "--poll-interval", "3600", *options, env=env,
        )  # fmt: skip
        try:
            out = subprocess.run(
                [sys.executable, __file__, "--client", str(server.port), str(texts_file), "--clients",
                 str(args.clients), "--requests", str(args.requests)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            measured[name] = json.loads(out.stdout.strip().splitlines()[-1])
            batching = json.loads(http_get(server.port, "/version"))["batching"]
            measured[name]["mean_requests_per_pass"] = batching["mean_requests_per_pass"]
        finally:
            server.stop()
    return measured


def forward_floor(project: Path, clients: int, repeats: int = 30) -> dict[str, float]:
    """What the served model's forward passes alone cost on this machine (no HTTP, no queue): one text, and
    `clients` texts in one pass (medians of `repeats`, on the texts the clients send). No service answers
    `clients` concurrent requests sooner than one such pass, and batching cannot multiply throughput by
    more than `clients` single passes over one pass of `clients`: the goals' floor on this hardware."""
    import statistics

    import pandas as pd

    from tasks.config import load_config
    from tasks.inference import Predictor
    from tasks.paths import ProjectPaths

    paths = ProjectPaths.at(project)  # the champion's weights: the folder's runs promoted what they trained
    predictor = Predictor(paths.challenger_dir, load_config(paths.params).train.max_length)
    texts = pd.read_parquet(paths.split_file("test"))["text"].tolist()

    def median_ms(size: int) -> float:
        times = []
        for i in range(repeats):
            batch = [texts[(i * size + j) % len(texts)] for j in range(size)]
            started = time.perf_counter()
            predictor.predict(batch, size)
            times.append(1000 * (time.perf_counter() - started))
        return statistics.median(times)

    predictor.predict(texts[:clients], clients)  # warm-up
    one, full = median_ms(1), median_ms(clients)
    return {"one_text_ms": round(one, 1), "full_pass_ms": round(full, 1), "gain_bound": clients * one / full}


def http_get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    return conn.getresponse().read()


# -- the run -----------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--races", type=int, default=30, help="races through the tracking server (30)")
    parser.add_argument(
        "--pg-races", type=int, default=10, help="races on the PostgreSQL store directly (10)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs started together in one folder (3)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent serving clients (8)")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per service (2000)")
    parser.add_argument("--warmup", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=2, metavar=("PORT", "TEXTS_FILE"), help=argparse.SUPPRESS)
    return parser.parse_args()


def report(race_runs: dict[str, dict], runs: dict, serving: dict, floor: dict, clients: int) -> None:
    """The tables, then the one-line JSON result."""
    import numpy as np

    def pct(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)), 1) if values else 0.0

    rps = {name: len(m["latencies_ms"]) / m["seconds"] for name, m in serving.items()}
    result = {
        "race_trials": sum(r["trials"] for r in race_runs.values()),
        "race_trials_with_one_winner": sum(r["one_winner"] for r in race_runs.values()),
        "ledger_mismatches": sum(r["ledger_mismatches"] for r in race_runs.values()),
        "same_folder_runs": runs["runs"],
        "same_folder_runs_interleaved": runs["interleaved"] + runs["runs"] - runs["completed"],
        "serve_clients": clients,
        "serve_p50_ms": pct(serving["batched"]["latencies_ms"], 50),
        "serve_p99_ms": pct(serving["batched"]["latencies_ms"], 99),
        "serve_throughput_vs_one_at_a_time": round(rps["batched"] / rps["one at a time"], 2),
        "serve_forward_ms_one_text": floor["one_text_ms"],
        "serve_forward_ms_full_pass": floor["full_pass_ms"],
        "serve_batching_gain_bound": round(floor["gain_bound"], 2),
    }
    print(f"\non {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}")
    print(f"{'races':<48} {'trials':>6} {'1 winner':>9} {'ledger ok':>9} {'p50 s':>6} {'max s':>6}")
    for label, r in race_runs.items():
        ok = r["one_winner"] - r["ledger_mismatches"]
        worst = max(r["seconds"], default=0.0)
        typical = pct(r["seconds"], 50)
        print(f"{label:<48} {r['trials']:>6} {r['one_winner']:>9} {ok:>9} {typical:>6} {worst:>6.2f}")
    print(
        f"\nsame folder: a holder SIGKILLed, then {runs['runs']} runs at once: {runs['completed']} done, "
        f"{runs['interleaved']} interleaved, {runs['took_over']} took over from the killed one; each worked "
        f"{runs['work_s']} s, one after another"
    )
    title = f"serving, {clients} closed-loop clients"
    print(f"\n{title:<48} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>7} {'req/pass':>8} {'errors':>6}")
    for name in ("one at a time", "batched"):
        m = serving[name]
        p50, p99 = pct(m["latencies_ms"], 50), pct(m["latencies_ms"], 99)
        shared, errors = m["mean_requests_per_pass"], len(m["errors"])
        print(f"{name:<48} {p50:>7} {p99:>7} {rps[name]:>7.0f} {shared:>8} {errors:>6}")
    print(
        f"the model's forward passes alone, here: one text {floor['one_text_ms']} ms, {clients} texts in one "
        f"pass {floor['full_pass_ms']} ms; so no pass of {clients} requests is answered sooner, and batching "
        f"multiplies throughput by at most {floor['gain_bound']:.2f}"
    )
    print(json.dumps(result))


def main() -> None:
    args = parse_args()
    if args.client:
        client(int(args.client[0]), Path(args.client[1]), args.clients, args.requests, args.warmup)
        return
    from tasks.runtime import configure_environment

    base = Path(tempfile.mkdtemp(prefix="transferline-bench-scaleout-"))
    os.environ["PREFECT_HOME"] = str(base / "prefect-home")  # this process never starts a flow itself
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(key, None)
    configure_environment()
    try:
        with scale_out(base) as svc:
            from tests.reliability.races import scale_out_env

            race_runs = {
                "2 checkouts, MLflow server + Prefect lock": races(
                    base, svc["tracking"], svc["prefect_api"], args.races, "http"
                ),
            }
            if args.pg_races:
                race_runs["2 checkouts, PostgreSQL store + advisory lock"] = races(
                    base, svc["store"], None, args.pg_races, "pg"
                )
            env = scale_out_env(svc["tracking"], svc["prefect_api"])
            project, runs = same_folder_runs(base, env, args.runs)
            serving = serve_load(args, project, env, base)
            floor = forward_floor(project, args.clients)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report(race_runs, runs, serving, floor, args.clients)


if __name__ == "__main__":
    main()
