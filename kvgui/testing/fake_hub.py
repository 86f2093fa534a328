"""A Hugging Face Hub on 127.0.0.1, for tests and benchmarks: real sockets, real HTTP.

It answers the endpoints huggingface_hub calls, with the headers the Hub sends:

- ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true``: sizes and LFS sha256)
- ``GET /api/models?search=…`` (search), ``GET /api/models/{repo}/tree/{rev}``,
  ``POST /api/models/{repo}/paths-info/{rev}``
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: a 302 to ``/cdn/{sha256}`` carrying
  ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``, as the Hub
  redirects LFS files to its CDN; the CDN answers ``Range`` with 206 and ``Content-Range``
- errors as the Hub spells them: 401/403 with ``X-Error-Code: RepoNotFound``/``GatedRepo``,
  404 ``RepoNotFound``/``EntryNotFound``/``RevisionNotFound``, 429 with ``Retry-After``

Files are served from disk (header-faithful sparse GGUFs cost a few MB). Faults for tests:
``delay`` (a slow server), ``drop_after`` (a connection that dies mid-body, ``drop_times``
times), ``short_body`` (a body shorter than its Content-Length), ``corrupt`` (bytes that do not
match the published sha256), ``fail`` (a status for every request whose path starts with a
prefix). ``log`` records every request: method, path, Range, status, body bytes sent.

The sha256 of a file is computed when it is added, unless the test gives one: a multi-GB
sparse file whose header alone is read can be given a stand-in (it is never downloaded whole).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class FakeFile:
    path: str  # in the repo
    source: Path  # on disk
    size: int
    sha256: str


@dataclass
class FakeRepo:
    repo: str
    commit: str
    files: dict[str, FakeFile] = field(default_factory=dict)
    private: bool = False
    gated: bool = False
    token: str | None = None  # the token that may read it (private or gated)
    downloads: int = 0


@dataclass
class Logged:
    method: str
    path: str
    range: str | None
    status: int
    sent: int
    authorized: bool


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def commit_hash(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


class FakeHub:
    """``with FakeHub() as hub: hub.add_file(repo, path, source)``; ``hub.endpoint`` is the
    value for HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.log: list[Logged] = []
        self.delay = 0.0
        self.drop_after: int | None = None
        self.drop_times = 0
        self.short_body = False
        self.corrupt = False
        self.fail: dict[str, tuple[int, dict[str, str]]] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub",
                                        daemon=True)

    @property
    def endpoint(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- content ------------------------------------------------------------------------
    def add_repo(self, repo: str, *, private: bool = False, gated: bool = False,
                 token: str | None = None, downloads: int = 0) -> FakeRepo:
        r = self.repos.get(repo)
        if r is None:
            r = self.repos[repo] = FakeRepo(repo, commit_hash(repo), private=private,
                                            gated=gated, token=token, downloads=downloads)
        return r

    def add_file(self, repo: str, path: str, source: Path, *,
                 sha256: str | None = None) -> FakeFile:
        r = self.add_repo(repo)
        source = Path(source)
        size = source.stat().st_size
        f = FakeFile(path, source, size, sha256 or _sha256_of(source))
        r.files[path] = f
        r.commit = commit_hash(r.repo + "".join(sorted(r.files)))
        return f

    def requests(self, method: str | None = None, under: str = "") -> list[Logged]:
        """The log (once every request in flight has been answered and recorded)."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=5)
            return [e for e in self.log if (method is None or e.method == method)
                    and e.path.startswith(under)]

    def clear_log(self) -> None:
        """Forget every request so far (once those in flight have been answered)."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=5)
            self.log.clear()

    def range_requests(self) -> list[Logged]:
        return [e for e in self.requests("GET", "/cdn/") if e.range]

    def _record(self, entry: Logged) -> None:
        with self._lock:
            self.log.append(entry)

    def _begin(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _end(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()


_REVISION = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/(tree|paths-info)/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        # --- plumbing -------------------------------------------------------------------
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  *, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            sent = 0
            if self.command != "HEAD":
                self.wfile.write(body)
                sent = len(body)
            self._log(status, sent)

        def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(data).encode(), headers)

        def _error(self, status: int, code: str, message: str = "") -> None:
            headers = {"X-Error-Code": code}
            if message:
                headers["X-Error-Message"] = message
            self._json(status, {"error": message or code}, headers)

        def _log(self, status: int, sent: int) -> None:
            hub._record(Logged(self.command, self.path, self.headers.get("Range"), status, sent,
                               self.headers.get("Authorization") is not None))

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization") or ""
            return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

        def _allowed(self, repo: FakeRepo) -> bool:
            """Answer 401/403 as the Hub does; True when the request may read the repo."""
            if not (repo.private or repo.gated):
                return True
            token = self._token()
            if token == repo.token:
                return True
            if token is not None and repo.private:
                self._error(401, "RepoNotFound", "Invalid credentials in Authorization header")
            elif repo.gated and token is not None:
                self._error(403, "GatedRepo", "Access to this model is restricted")
            elif repo.gated:
                self._error(401, "GatedRepo", "Access to this model is restricted")
            else:
                self._error(401, "RepoNotFound", "Repository not found")
            return False

        def _faults(self) -> bool:
            if hub.delay:
                time.sleep(hub.delay)
            for prefix, (status, headers) in hub.fail.items():
                if self.path.startswith(prefix):
                    self._json(status, {"error": "injected"}, headers)
                    return True
            return False

        # --- verbs ----------------------------------------------------------------------
        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            hub._begin()  # before a byte of the answer: requests() waits for the record
            try:
                self._get()
            finally:
                hub._end()

        def do_POST(self) -> None:
            hub._begin()
            try:
                self._post()
            finally:
                hub._end()

        def _post(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            if self._faults():
                return
            m = _TREE.match(urlparse(self.path).path)
            if not m or m.group(2) != "paths-info":
                self._error(404, "NotFound")
                return
            repo = self._repo(m.group(1), m.group(3))
            if repo is None:
                return
            wanted = parse_qs(body).get("paths", [])
            if not wanted and body.startswith("{"):
                wanted = json.loads(body).get("paths", [])
            self._json(200, [_entry(f) for p, f in repo.files.items() if p in wanted])

        def _get(self) -> None:
            if self._faults():
                return
            url = urlparse(self.path)
            path = unquote(url.path)
            if path.startswith("/cdn/"):
                self._cdn(path[len("/cdn/"):])
                return
            if path == "/api/models":
                self._search(parse_qs(url.query))
                return
            m = _TREE.match(path)
            if m:
                repo = self._repo(m.group(1), m.group(3))
                if repo is not None:
                    under = m.group(4) or ""
                    self._json(200, [_entry(f) for p, f in sorted(repo.files.items())
                                     if p.startswith(under)])
                return
            m = _REVISION.match(path)
            if m:
                repo = self._repo(m.group(1), m.group(2) or "main")
                if repo is not None:
                    blobs = "blobs" in parse_qs(url.query)
                    self._json(200, _model_info(repo, blobs),
                               {"X-Repo-Commit": repo.commit})
                return
            m = _RESOLVE.match(path)
            if m:
                self._resolve(m.group(1), m.group(2), m.group(3))
                return
            self._error(404, "NotFound")

        # --- endpoints ------------------------------------------------------------------
        def _repo(self, name: str, revision: str) -> FakeRepo | None:
            repo = hub.repos.get(name)
            if repo is None:
                if self._token() is None:  # the Hub says 401 to anonymous callers
                    self._error(401, "RepoNotFound", "Repository not found")
                else:
                    self._error(404, "RepoNotFound", "Repository not found")
                return None
            if not self._allowed(repo):
                return None
            if revision not in ("main", repo.commit):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            return repo

        def _search(self, query: dict[str, list[str]]) -> None:
            text = (query.get("search") or [""])[0].lower()
            hits = sorted((r for r in hub.repos.values() if text in r.repo.lower()
                           and not r.private), key=lambda r: -r.downloads)
            limit = int((query.get("limit") or ["1000"])[0])
            self._json(200, [{"id": r.repo, "_id": r.commit[:24], "downloads": r.downloads,
                              "likes": 0, "gated": r.gated, "private": False,
                              "tags": ["gguf"]} for r in hits[:limit]])

        def _resolve(self, name: str, revision: str, path: str) -> None:
            repo = self._repo(name, revision)
            if repo is None:
                return
            f = repo.files.get(path)
            if f is None:
                self._send(404, b'{"error":"Entry not found"}',
                           {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit})
                return
            location = f"{hub.endpoint}/cdn/{f.sha256}?repo={name}&path={path}"
            self._send(302, b"", {
                "Location": location, "X-Repo-Commit": repo.commit,
                "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size),
                "ETag": f'"{commit_hash(path)}"', "Accept-Ranges": "bytes",
            }, content_type="text/plain")

        def _cdn(self, sha: str) -> None:
            f = next((f for r in hub.repos.values() for f in r.files.values()
                      if f.sha256 == sha), None)
            if f is None:
                self._send(404, b"no such object", content_type="text/plain")
                return
            start, end, status = 0, f.size - 1, 200
            rng = self.headers.get("Range")
            if rng:
                m = _RANGE.match(rng.strip())
                if not m or int(m.group(1)) >= f.size:
                    self._send(416, b"", {"Content-Range": f"bytes */{f.size}"})
                    return
                start = int(m.group(1))
                end = min(int(m.group(2)) if m.group(2) else f.size - 1, f.size - 1)
                status = 206
            length = end - start + 1
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{f.sha256}"')
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{f.size}")
            self.end_headers()
            if self.command == "HEAD":
                self._log(status, 0)
                return
            limit = length
            with hub._lock:
                if hub.drop_after is not None and hub.drop_times > 0:
                    hub.drop_times -= 1
                    limit = min(length, hub.drop_after)
            if hub.short_body:
                limit = min(limit, length // 2)
            sent = 0
            with open(f.source, "rb") as src:
                src.seek(start)
                while sent < limit:
                    chunk = src.read(min(1 << 20, limit - sent))
                    if not chunk:
                        break
                    if hub.corrupt and sent == 0 and start == 0:
                        chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    sent += len(chunk)
            self._log(status, sent)
            if sent < length:  # a dropped connection: close it mid-body
                self.close_connection = True
                with contextlib.suppress(OSError):  # the client may have gone already
                    self.wfile.flush()
                    self.connection.shutdown(2)

    return Handler


def _entry(f: FakeFile) -> dict[str, Any]:
    return {"type": "file", "path": f.path, "size": f.size, "oid": commit_hash(f.path),
            "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134}}


def _model_info(repo: FakeRepo, blobs: bool) -> dict[str, Any]:
    siblings = []
    for p, f in sorted(repo.files.items()):
        s: dict[str, Any] = {"rfilename": p}
        if blobs:
            s.update({"size": f.size, "blobId": commit_hash(p),
                      "lfs": {"size": f.size, "sha256": f.sha256, "pointerSize": 134}})
        siblings.append(s)
    return {"id": repo.repo, "_id": repo.commit[:24], "modelId": repo.repo, "sha": repo.commit,
            "private": repo.private, "gated": "auto" if repo.gated else False,
            "disabled": False, "downloads": repo.downloads, "likes": 0, "tags": ["gguf"],
            "library_name": "gguf", "siblings": siblings}
