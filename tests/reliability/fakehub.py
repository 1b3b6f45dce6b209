"""A fake Hugging Face Hub on loopback that speaks exactly what huggingface_hub 2.x asks of it, and can fail.

Endpoints (the ones `HfApi.model_info` and `snapshot_download(revision=SHA, local_dir=...)` call):
  GET  /api/models/{repo}/revision/{rev}  model info: the commit a branch/tag/SHA resolves to, the siblings
  GET  /api/models/{repo}/tree/{sha}      the file listing (git oid, size, LFS pointer) at a commit
  HEAD /{repo}/resolve/{rev}/{file}       metadata: X-Repo-Commit, ETag or, for LFS files, a 302 to the CDN
  GET  /{repo}/resolve/{rev}/{file}       regular files; LFS files redirect to the CDN
  HEAD/GET /cdn/{sha256}                  LFS bodies, with Range support (206 + Content-Range)

The CDN is addressed as `localhost` while the Hub is `127.0.0.1`: a different origin, as on the real Hub, so
the client takes the file metadata from the 302 itself (X-Linked-Etag, X-Linked-Size) instead of following it.

Faults, set by the test while the server runs:
  `drop_api`   the next N model-info requests lose their connection before any response;
  `cut[name]`  the next N body responses of that LFS file are cut at byte `cut_at` (of the file): a request
               that starts before it gets the bytes up to it, one that starts at or after it gets none;
               the connection is then closed mid-body (Content-Length promised more).
Every request is logged (`seen`), so a test can count retries and check their Range headers.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    sha: str = ""  # the commit: derived from the files, 40 hex like a git commit

    def __post_init__(self) -> None:
        if not self.sha:
            listing = "".join(f"{name} {git_oid(data)}\n" for name, data in sorted(self.files.items()))
            self.sha = hashlib.sha1(listing.encode()).hexdigest()

    def resolve(self, rev: str) -> str | None:
        return self.sha if rev in ("main", self.sha) else None


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    at: float  # time.monotonic() when the request arrived
    body_bytes: int = 0  # bytes of body actually sent
    cut: bool = False  # the connection was closed before the promised body was complete


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo]
    drop_api: int = 0
    cut: dict[str, int] = field(default_factory=dict)
    cut_at: int = 0
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs = {
            hashlib.sha256(d).hexdigest(): (n, d) for r in self.repos.values() for n, d in r.files.items()
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, method: str, fragment: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == method and fragment in s.path]

    def _take(self, counter: str, key: str | None = None) -> bool:
        """Consume one planned fault; True if this request is to fail."""
        with self._lock:
            if key is None:
                if self.drop_api > 0:
                    self.drop_api -= 1
                    return True
                return False
            if self.cut.get(key, 0) > 0:
                self.cut[key] -= 1
                return True
            return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with Content-Length on every answer, like the real Hub
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet: the test reads `hub.seen`
        pass

    # -- plumbing --------------------------------------------------------------------------------------
    def _log(self) -> Seen:
        entry = Seen(
            self.command, unquote(urlsplit(self.path).path), self.headers.get("Range"), time.monotonic()
        )
        with self.server.hub._lock:
            self.server.hub.seen.append(entry)
        return entry

    def _send(
        self, status: int, headers: dict[str, str], body: bytes = b"", length: int | None = None
    ) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, data: object) -> None:
        self._send(200, {"Content-Type": "application/json"}, json.dumps(data).encode())

    def _error(self, status: int, code: str, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": code, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, headers, json.dumps({"error": code}).encode())

    def _hang_up(self) -> None:
        """Close the socket now, whatever was promised: what a dropped connection looks like to the client."""
        self.wfile.flush()
        self.close_connection = True
        with suppress(OSError):  # the client may have gone already
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- routes ----------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        seen = self._log()
        hub = self.server.hub
        path = seen.path
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path):
            if hub._take("api"):
                return self._hang_up()
            return self._model_info(m[1], m[2])
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
            return self._tree(m[1], m[2])
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(m[1], m[2], m[3])
        if m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
            return self._cdn(m[1], seen)
        self._error(404, "EntryNotFound")

    def _repo(self, repo_id: str, rev: str) -> tuple[FakeRepo, str] | None:
        repo = self.server.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound")
            return None
        sha = repo.resolve(rev)
        if sha is None:
            self._error(404, "RevisionNotFound")
            return None
        return repo, sha

    def _model_info(self, repo_id: str, rev: str) -> None:
        if (found := self._repo(repo_id, rev)) is None:
            return
        repo, sha = found
        siblings = [{"rfilename": name} for name in sorted(repo.files)]
        self._json({"id": repo_id, "modelId": repo_id, "sha": sha, "private": False, "siblings": siblings})

    def _tree(self, repo_id: str, rev: str) -> None:
        if (found := self._repo(repo_id, rev)) is None:
            return
        entries = []
        for name, data in sorted(found[0].files.items()):
            entry: dict[str, object] = {"type": "file", "oid": git_oid(data), "size": len(data), "path": name}
            if name.endswith(LFS_SUFFIXES):
                sha256 = hashlib.sha256(data).hexdigest()
                entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 134}
            entries.append(entry)
        self._json(entries)

    def _resolve(self, repo_id: str, rev: str, name: str) -> None:
        if (found := self._repo(repo_id, rev)) is None:
            return
        repo, sha = found
        if name not in repo.files:
            return self._error(404, "EntryNotFound", commit=sha)
        data = repo.files[name]
        if name.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            cdn = f"http://localhost:{self.server.hub.port}/cdn/{sha256}"
            headers = {"Location": cdn, "X-Repo-Commit": sha, "X-Linked-Etag": f'"{sha256}"'}
            return self._send(302, {**headers, "X-Linked-Size": str(len(data))})
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_oid(data)}"', "Accept-Ranges": "bytes"}
        self._send(200, headers, data)

    def _cdn(self, sha256: str, seen: Seen) -> None:
        hub = self.server.hub
        if sha256 not in hub._blobs:
            return self._error(404, "EntryNotFound")
        name, data = hub._blobs[sha256]
        start = 0
        if seen.range and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", seen.range)):
            start = int(m[1])
        headers = {
            "ETag": f'"{sha256}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        status = 200
        if start:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if self.command == "HEAD" or not hub._take("cut", name):
            seen.body_bytes = 0 if self.command == "HEAD" else len(body)
            return self._send(status, headers, body)
        # promise the whole remainder, deliver only up to the cut point, then drop the connection
        partial = data[start : max(start, hub.cut_at)]
        self._send(status, headers, partial, length=len(body))
        seen.body_bytes, seen.cut = len(partial), True
        self._hang_up()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: FakeHub


@contextmanager
def serving(hub: FakeHub) -> Iterator[FakeHub]:
    """Run `hub` on a random loopback port for the duration of the block."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.hub = hub
    hub.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
