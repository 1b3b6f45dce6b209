"""serve: answer prediction requests with whatever holds the registry's `champion` alias.

A version is served only after its downloaded files match the sha256 hashes recorded when it was
registered (``weights_sha256`` and ``model_files_sha256`` model-version tags, see tasks/promote.py).
Inference is the evaluation's own path (tasks/inference.py Predictor: same tokenisation, max length,
length-sorted batches, precision), so a served label is the label the gate saw offline.

A watcher thread polls the alias. When it moves, the new version is downloaded, verified and warmed up
in that thread while requests keep going to the old one; then one attribute assignment swaps them.
A request takes its model reference once, so it finishes on the version it started with, and the
response names that version. A version that fails to download, verify or load is refused: the old
one keeps serving, and /health, /version and the log say what was refused and why.

Concurrent requests share forward passes (dynamic batching, tasks/batching.py): a request waits a few
milliseconds for company, then its texts are scored with the others' in one length-sorted call of the
same inference path; its answer holds its own rows and the version it was admitted with.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from tasks.batching import Batcher, BatchSettings
from tasks.inference import Predictor
from tasks.kinds import load_task
from tasks.kinds.base import RequestError, class_names
from tasks.prepare import file_sha256
from tasks.registry import CHAMPION, Registry, RegistryError, VersionInfo

log = logging.getLogger("transferline.serve")
T = TypeVar("T")

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_TAG = "weights_sha256"  # recorded by tasks/promote.py lineage_tags
FILES_TAG = "model_files_sha256"  # JSON {file name: sha256}, same origin
MAX_LENGTH_PARAM = "train.max_length"  # the run's params: the length the model was trained and scored with
VERSION_HEADER = "X-Model-Version"
KEEP_ALIVE_S = 75  # seconds an idle keep-alive connection stays open (see run_server)


class VerificationError(RuntimeError):
    """Downloaded model files do not match the hashes recorded at registration (or none were recorded)."""


@dataclass(frozen=True)
class ServeSettings:
    """What `transferline serve` is told on its command line (deployment settings, not experiment params)."""

    host: str
    port: int
    poll_s: float  # how often the champion alias is read
    retry_refused_s: float  # how long a refused version waits before it is tried again
    max_body_bytes: int  # larger request bodies get 413 before they are read
    max_batch: int  # more texts in one request get 413
    batch_size: int  # inference batch; the project's evaluate.batch_size, as offline
    batch_window_s: float  # dynamic batching: how long a request waits for others to share its pass
    batch_requests: int  # dynamic batching: requests per pass at most (1: one request at a time)
    max_pixels: int | None = None  # images declaring more get 413 before decoding (None: image.max_pixels)


@dataclass(frozen=True)
class LoadedModel:
    """One verified model version, loaded and warmed up."""

    name: str
    version: str
    run_id: str | None
    weights_sha256: str
    labels: tuple[str, ...]  # class names in class-id order
    predictor: Predictor
    loaded_at: str

    def predict(self, items: list[Any], batch_size: int) -> list[dict[str, Any]]:
        """The task's answer per input, in input order (classification: label, score, probabilities;
        entities: their spans)."""
        return self.predictor.kind.predict(self.predictor, items, batch_size)

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "run_id": self.run_id,
            "weights_sha256": self.weights_sha256,
            "labels": list(self.labels),
            "max_length": self.predictor.max_length,
            "device": str(self.predictor.device),
            "precision": self.predictor.precision,
            "loaded_at": self.loaded_at,
        }


@dataclass(frozen=True)
class Refusal:
    version: str
    error: str
    at: float  # time.time()

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "error": self.error, "at": _iso(self.at)}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


# -- verification and loading --------------------------------------------------------------------------


def verify_model_dir(model_dir: Path, tags: dict[str, str]) -> str:
    """Check a downloaded version against the hashes recorded at its registration; returns the weights'
    sha256. Raises VerificationError naming the first mismatch, or when nothing was recorded to check."""
    expected = tags.get(WEIGHTS_TAG)
    if not expected:
        raise VerificationError(f"no {WEIGHTS_TAG} tag was recorded for this version: cannot verify it")
    recorded: dict[str, str] = {}
    if tags.get(FILES_TAG):
        try:
            recorded = dict(json.loads(tags[FILES_TAG]))
        except (ValueError, TypeError) as err:
            raise VerificationError(f"unreadable {FILES_TAG} tag: {err}") from None
    recorded.setdefault(WEIGHTS_FILE, expected)
    if recorded[WEIGHTS_FILE] != expected:
        raise VerificationError(f"the {WEIGHTS_TAG} and {FILES_TAG} tags disagree about {WEIGHTS_FILE}")
    for name, sha in sorted(recorded.items()):
        path = model_dir / name
        if not path.is_file():
            raise VerificationError(f"{name} is missing from the downloaded model")
        actual = file_sha256(path)
        if actual != sha:
            raise VerificationError(f"{name} has sha256 {actual[:12]}…, but {sha[:12]}… was recorded")
    return expected


def trained_max_length(registry: Registry, info: VersionInfo) -> int | None:
    """The max length the version was trained and evaluated with (its run's params), if recorded."""
    if not info.run_id:
        return None
    value = registry.run_details(info.run_id, max_artifacts=1).params.get(MAX_LENGTH_PARAM)
    return int(value) if value is not None else None


def load_version(
    registry: Registry, info: VersionInfo, cache_root: Path, default_max_length: int
) -> LoadedModel:
    """Download, verify, load and warm up one registered version.

    Args:
        cache_root: versions are kept under ``<cache_root>/<name>/v<version>``; a copy that fails
            verification is deleted so that the next attempt downloads it afresh.
        default_max_length: used only for a version whose run did not record ``train.max_length``.
    Raises:
        VerificationError, RegistryError, OSError: the version cannot be served.
    """
    dest = cache_root / info.name / f"v{info.version}"
    model_dir = registry.download_model_dir(info.name, info.version, dest)
    try:
        weights = verify_model_dir(model_dir, info.tags)
    except VerificationError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    max_length = trained_max_length(registry, info) or default_max_length
    predictor = Predictor(model_dir, max_length)
    predictor.logits([predictor.kind.warmup_input()], 1)
    labels = tuple(class_names(predictor.model.config))
    return LoadedModel(info.name, info.version, info.run_id, weights, labels, predictor, _iso(time.time()))


# -- threads -------------------------------------------------------------------------------------------
# torch's OpenMP pool belongs to the thread that calls it: every live thread that has run torch keeps a
# team of its own, and on a small CPU those teams slow each other down (one text: 6 ms from a single
# thread, 10 ms once a second thread has run a model, measured on this project's 2-core box). So the
# service runs all inference on one long-lived thread, and loads each version on a thread that ends
# (taking its team with it) as soon as the model is ready.


def in_fresh_thread(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) on a new thread that exits afterwards; its result, or its exception re-raised."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as err:  # re-raised in the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="model-loader", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# -- following the alias -------------------------------------------------------------------------------

Loader = Callable[[VersionInfo], LoadedModel]


@dataclass
class ChampionWatcher:
    """Holds the served model and follows `champion`; every method is safe to call from any thread."""

    registry: Registry
    model_name: str
    loader: Loader
    poll_s: float
    retry_refused_s: float
    current: LoadedModel | None = None  # replaced by assignment only: readers take one reference
    refused: Refusal | None = None
    champion_version: str | None = None  # what the alias pointed at on the last successful read
    registry_error: str | None = None
    checked_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _refresh_lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self) -> None:
        """Read the alias once; load, verify and swap in a new champion. Never raises."""
        with self._refresh_lock:
            try:
                info = self.registry.get_alias(self.model_name, CHAMPION)
            except RegistryError as err:
                self.registry_error = str(err).splitlines()[0]
                log.warning("cannot read %s@%s, still serving %s: %s", self.model_name, CHAMPION,
                            _v(self.current), self.registry_error)  # fmt: skip
                return
            self.registry_error, self.checked_at = None, time.time()
            self.champion_version = info.version if info else None
            current = self.current
            if info is None or (current is not None and current.version == info.version):
                if info is not None:
                    self.refused = None  # the alias is back on what we serve: nothing to report
                return
            refused = self.refused
            if (
                refused
                and refused.version == info.version
                and time.time() - refused.at < self.retry_refused_s
            ):
                return
            log.info("%s@%s is v%s: loading it (serving %s meanwhile)", self.model_name, CHAMPION,
                     info.version, _v(current))  # fmt: skip
            try:
                loaded = self.loader(info)
            except Exception as err:  # any failure to load must leave the old model serving
                self.refused = Refusal(info.version, f"{type(err).__name__}: {err}", time.time())
                log.error("refused %s v%s, still serving %s: %s", self.model_name, info.version,
                          _v(current), self.refused.error)  # fmt: skip
                return
            self.current, self.refused = loaded, None
            log.info("now serving %s v%s (was %s)", self.model_name, loaded.version, _v(current))

    def start(self) -> None:
        """Follow the alias in a daemon thread until stop()."""

        def loop() -> None:
            while not self._stop.wait(self.poll_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def status(self) -> dict[str, Any]:
        """What /health and /version report."""
        current = self.current
        if current is None:
            state = "unavailable"
        elif self.refused is not None or self.registry_error is not None:
            state = "degraded"  # serving, but not what the registry says, or the registry is unreadable
        else:
            state = "ok"
        return {
            "status": state,
            "model": self.model_name,
            "version": current.version if current else None,
            "champion_alias": self.champion_version,
            "serving": current.describe() if current else None,
            "refused": self.refused.describe() if self.refused else None,
            "registry_error": self.registry_error,
            "checked_at": _iso(self.checked_at) if self.checked_at else None,
        }


def _v(model: LoadedModel | None) -> str:
    return f"v{model.version}" if model is not None else "nothing"


# -- HTTP ----------------------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: 413 for a request body over max_bytes, on the declared Content-Length or on the
    bytes actually received (a chunked upload declares none), before the app parses any of it.

    The body is read here, at most max_bytes of it, and handed to the app in one piece.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            status = 413 if declared.isdigit() else 400
            await _send_json(
                send, status, self._detail() if status == 413 else {"detail": "bad Content-Length"}
            )
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await _send_json(send, 413, self._detail())
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for a disconnect, as the server would

        await self.app(scope, replay, send)

    def _detail(self) -> dict:
        return {"detail": f"request body exceeds {self.max_bytes} bytes (--max-body-bytes)"}


async def _send_json(send: Callable, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def create_app(watcher: ChampionWatcher, settings: ServeSettings) -> Any:
    """The ASGI app: POST /predict, GET /health, GET /version.

    Plain Starlette rather than FastAPI: three routes need no dependency injection, and the body is
    parsed by the task (text: tasks/kinds/text_requests.py) so that errors are short and never echo a
    megabyte of input.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    # One inference at a time, always on the same thread: torch already uses every core for one batch,
    # so concurrent calls would only oversubscribe the CPU; and one thread keeps one OpenMP team (above).
    # Concurrent requests share that thread's passes instead (tasks/batching.py).
    inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
    batcher: Batcher[LoadedModel, dict[str, Any]] = Batcher(
        lambda model, texts: model.predict(texts, settings.batch_size),
        inference,
        BatchSettings(settings.batch_window_s, settings.batch_requests, settings.max_batch),
    )

    def json_response(body: dict, status: int = 200, version: str | None = None) -> Response:
        headers = {VERSION_HEADER: version} if version else None
        return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)

    async def predict(request: Request) -> Response:
        """Labels and class probabilities for a batch of texts, with the model version that answered."""
        model = watcher.current  # one reference for the whole request: a swap cannot split it
        # before a model is loaded the body is read as text, the first task (the answer is then a 503)
        kind = model.predictor.kind if model is not None else load_task("text-classification", None)
        try:  # the served model's task reads the body (texts; images as base64 JSON or multipart)
            content_type = request.headers.get("content-type", "")
            texts = kind.parse_request(await request.body(), content_type, settings)
        except RequestError as err:
            return json_response({"detail": err.detail}, err.status)
        if model is None:
            return json_response({"detail": "no model loaded yet", **watcher.status()}, 503)
        # the event loop stays free while the inference thread works on this request's pass
        predictions = await batcher.submit(model, texts)
        body = {"model": model.name, "version": model.version, "predictions": predictions}
        return json_response(body, version=model.version)

    async def health(request: Request) -> Response:
        """200 while a verified model is served (status ok or degraded), 503 before one is."""
        status = watcher.status()
        body = {k: status[k] for k in ("status", "model", "version", "champion_alias", "refused")}
        body["registry_error"] = status["registry_error"]
        return json_response(body, 503 if status["status"] == "unavailable" else 200, status["version"])

    async def version(request: Request) -> Response:
        """The served version and its weights hash, what the alias says, any refused version, and how
        many requests shared each inference pass."""
        status = {**watcher.status(), "batching": batcher.stats.describe()}
        return json_response(status, version=status["version"])

    app = Starlette(
        lifespan=lambda app: batcher.running(),  # the collector lives as long as the server
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/version", version, methods=["GET"]),
        ],
    )
    return BodyLimit(app, settings.max_body_bytes)


# -- process -------------------------------------------------------------------------------------------


def build_watcher(registry: Registry, model_name: str, cache_root: Path, settings: ServeSettings,
                  default_max_length: int) -> ChampionWatcher:  # fmt: skip
    """A watcher that loads versions with load_version into cache_root."""
    return ChampionWatcher(
        registry=registry,
        model_name=model_name,
        loader=lambda info: in_fresh_thread(load_version, registry, info, cache_root, default_max_length),
        poll_s=settings.poll_s,
        retry_refused_s=settings.retry_refused_s,
    )


def run_server(
    watcher: ChampionWatcher, settings: ServeSettings, ready: Callable[[], None] | None = None
) -> None:
    """Load the champion (if any), then serve until interrupted; the watcher follows the alias meanwhile."""
    import uvicorn

    watcher.refresh()
    watcher.start()
    config = uvicorn.Config(
        create_app(watcher, settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        # Longer than a load balancer's idle timeout (60 s on the common ones), so that the balancer, not the
        # server, closes an idle connection: otherwise a client that reuses one after a pause can write
        # into a socket the server just closed and see a broken pipe instead of an answer.
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = uvicorn.Server(config)
    if ready is not None:
        ready()
    try:
        server.run()
    finally:
        watcher.stop()
