"""A local, loopback-only Hugging Face Hub look-alike for tests, plus pytest fixtures.

It implements exactly what ``huggingface_hub`` 2.4's ``model_info``/``snapshot_download``/``hf_hub_download``
call (read from its source):

- ``GET /api/models/{repo}[/revision/{rev}]`` -> JSON with ``id``, ``sha``, ``siblings``, ``gated``, ``private``;
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=&expand=&cursor=`` -> file/directory list, paginated with
  a GitHub-style ``Link: <…>; rel="next"`` header (``page_size`` entries per page);
- ``HEAD|GET /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag`` (git blob sha1, or the sha256 for
  LFS files, which also get ``X-Linked-Etag``/``X-Linked-Size``), ``Content-Length``, ``Accept-Ranges`` and
  single-range ``Range`` requests (206), as the client uses Range to resume;
- errors the way the Hub signals them: ``X-Error-Code`` ``RepoNotFound`` (404, or 401 for a private repo without
  the right token), ``RevisionNotFound`` (404), ``EntryNotFound`` (404), ``GatedRepo`` (401 on file downloads).

Test knobs: ``hang`` (``True`` or a path substring: accept, read the request, never answer), ``broken_files``
(listed in the tree, 404 on download), a request log
(``requests``, ``clear_log()``) so tests can assert that a cached fetch makes zero requests. The log records whether
a request carried a token, never the token itself.

Fixtures: ``hf_home`` isolates the Hub client (temporary ``HF_HOME``/cache/token path, ``HF_TOKEN`` cleared,
``HF_ENDPOINT`` pointed at a closed loopback port so a forgotten ``endpoint=`` cannot reach the internet, the
hub's HTTP client wrapped to raise :class:`NetworkRefused` for any non-loopback host, a temporary odeval hash
cache); ``hub_server`` starts a :class:`HubServer` (using ``hf_home``).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

__all__ = ["HubServer", "RequestRecord", "hf_home", "hub_server", "synthetic_model_files"]

DEAD_ENDPOINT = "http://127.0.0.1:9"  # discard port: nothing listens, connection refused at once
_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_RE_INFO = re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$")
_RE_TREE = re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RE_RESOLVE = re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_RE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def git_blob_sha1(data: bytes) -> str:
    """The id git (and the Hub's tree API) gives a file: sha1 over ``blob <len>\\0`` + bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def synthetic_model_files(seed: int = 0, *, weight_bytes: int = 6000) -> dict[str, bytes]:
    """A few KB of deterministic files shaped like a small model repo (one nested, one large enough for LFS)."""
    rng = random.Random(seed)
    return {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 64, "seed": seed}).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "vocab": {"a": 0, "b": 1}, "seed": seed}).encode(),
        "model.safetensors": bytes(rng.getrandbits(8) for _ in range(weight_bytes)),
        "tokenizer/tokenizer.bin": bytes(rng.getrandbits(8) for _ in range(2048)),
        "README.md": f"# synthetic repo {seed}\n".encode(),
    }


def _files_from(source: dict[str, bytes] | Path) -> dict[str, bytes]:
    if isinstance(source, dict):
        return {str(k): bytes(v) for k, v in source.items()}
    root = Path(source)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class _Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    private: bool = False
    token: str | None = None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it (``has_auth`` instead of the token so logs never hold secrets)."""

    method: str
    path: str
    query: str
    has_auth: bool


class HubServer:
    """Threaded HTTP server on 127.0.0.1 serving in-memory repos; use as a context manager or start()/stop()."""

    def __init__(self, *, page_size: int = 1000, lfs_threshold: int = 4096) -> None:
        self.page_size = page_size
        self.lfs_threshold = lfs_threshold
        self.hang: bool | str = False
        self.broken_files: set[str] = set()  # listed in the tree but 404 EntryNotFound on download (a broken repo)
        self._repos: dict[str, _Repo] = {}
        self._log: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        """Bind an ephemeral loopback port and serve in a daemon thread."""
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hung requests, stop serving and close the socket."""
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Endpoint to pass as ``endpoint=`` (``http://127.0.0.1:<port>``)."""
        assert self._httpd is not None, "HubServer not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- content -----------------------------------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes] | Path,
        branch: str = "main",
        *,
        gated: bool = False,
        private: bool = False,
        token: str | None = None,
        tags: tuple[str, ...] = (),
    ) -> str:
        """Add a commit with ``files`` to ``repo_id`` (created if new), move ``branch``/``tags`` to it; return sha.

        The sha is derived from the content, so the same files give the same commit (like a reproducible build).
        ``gated``: metadata is public but downloads need ``token``. ``private``: everything needs ``token``.
        """
        content = _files_from(files)
        digest = hashlib.sha1(repo_id.encode(), usedforsecurity=False)
        for path in sorted(content):
            digest.update(f"{path}\0{git_blob_sha1(content[path])}\n".encode())
        sha = digest.hexdigest()
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            repo.commits[sha] = content
            repo.refs[branch] = sha
            for tag in tags:
                repo.refs[tag] = sha
            repo.gated, repo.private, repo.token = gated, private, token
        return sha

    # -- request log -------------------------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of every request received since start or the last ``clear_log()``."""
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._log.append(rec)

    def _should_hang(self, path: str) -> bool:
        return self.hang is True or (isinstance(self.hang, str) and bool(self.hang) and self.hang in path)


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer  # set on the bound subclass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: tests read hub.requests instead

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(head=True)

    # -- plumbing ----------------------------------------------------------------------------------------------
    def _dispatch(self, *, head: bool) -> None:
        split = urlsplit(self.path)
        auth = self.headers.get("authorization") or ""
        self.hub._record(RequestRecord(self.command, split.path, split.query, has_auth=bool(auth)))
        if self.hub._should_hang(split.path):
            self.hub._release.wait()  # accept, read the request, never answer (until the server stops)
            self.close_connection = True
            return
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        try:
            if m := _RE_TREE.match(split.path):
                self._tree(m, query, auth, head)
            elif m := _RE_INFO.match(split.path):
                self._info(m, auth, head)
            elif m := _RE_RESOLVE.match(split.path):
                self._resolve(m, auth, head)
            else:
                raise _HubError(404, None, f"no route for {split.path}")
        except _HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
            self._send(err.status, json.dumps({"error": err.message}).encode(), "application/json", headers, head)

    def _send(
        self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None, head: bool = False
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _repo(self, repo_id: str, auth: str) -> _Repo:
        repo = self.hub._repos.get(repo_id)
        if repo is None:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        if repo.private and not self._authorized(repo, auth):
            raise _HubError(401, "RepoNotFound", "Repository not found")  # the Hub hides private repos like this
        return repo

    @staticmethod
    def _authorized(repo: _Repo, auth: str) -> bool:
        return repo.token is not None and auth == f"Bearer {repo.token}"

    @staticmethod
    def _commit(repo: _Repo, rev: str) -> str:
        rev = unquote(rev)
        if rev in repo.refs:
            return repo.refs[rev]
        if rev in repo.commits:
            return rev
        raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    def _entry(self, path: str, data: bytes) -> dict:
        entry: dict = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}
        if len(data) >= self.hub.lfs_threshold:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    # -- routes ------------------------------------------------------------------------------------------------
    def _info(self, m: re.Match, auth: str, head: bool) -> None:
        repo_id = m["repo"]
        repo = self._repo(repo_id, auth)
        sha = self._commit(repo, m["rev"] or "main")
        body = {
            "id": repo_id,
            "modelId": repo_id,
            "sha": sha,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": [{"rfilename": p} for p in sorted(repo.commits[sha])],
        }
        self._send(200, json.dumps(body).encode(), "application/json", head=head)

    def _tree(self, m: re.Match, query: dict[str, str], auth: str, head: bool) -> None:
        repo = self._repo(m["repo"], auth)
        sha = self._commit(repo, m["rev"])
        files = repo.commits[sha]
        base = unquote(m["path"] or "").strip("/")
        prefix = f"{base}/" if base else ""
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        if base and not any(p.startswith(prefix) for p in files):
            raise _HubError(404, "EntryNotFound", f"{base} does not exist on {sha}", commit=sha)
        entries: dict[str, dict] = {}
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):  # directories on the way
                d = prefix + "/".join(rest[:depth])
                if (recursive or depth == 1) and d not in entries:
                    entries[d] = {"type": "directory", "oid": git_blob_sha1(d.encode()), "size": 0, "path": d}
            if recursive or len(rest) == 1:
                entries[path] = self._entry(path, files[path])
        items = [entries[k] for k in sorted(entries)]
        start = int(query.get("cursor", "0"))
        page = items[start : start + self.hub.page_size]
        headers = {}
        if start + self.hub.page_size < len(items):
            nxt = (
                f"{self.hub.url}{urlsplit(self.path).path}?recursive={query.get('recursive', 'false')}"
                f"&expand={query.get('expand', 'false')}&cursor={start + self.hub.page_size}"
            )
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._send(200, json.dumps(page).encode(), "application/json", headers, head)

    def _resolve(self, m: re.Match, auth: str, head: bool) -> None:
        repo_id = m["repo"]
        repo = self._repo(repo_id, auth)
        sha = self._commit(repo, m["rev"])
        if repo.gated and not self._authorized(repo, auth):
            msg = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            raise _HubError(401, "GatedRepo", msg, commit=sha)
        path = unquote(m["path"])
        data = repo.commits[sha].get(path)
        if data is None or path in self.hub.broken_files:
            raise _HubError(404, "EntryNotFound", f"{path} does not exist on {sha}", commit=sha)
        entry = self._entry(path, data)
        etag = f'"{entry["lfs"]["oid"]}"' if "lfs" in entry else f'"{entry["oid"]}"'
        headers = {"X-Repo-Commit": sha, "ETag": etag, "Accept-Ranges": "bytes"}
        if "lfs" in entry:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(len(data))})
        status, body = 200, data
        rng = self.headers.get("Range")
        if rng and not head:
            rm = _RE_RANGE.match(rng.strip())
            first = int(rm[1]) if rm and rm[1] else None
            last = int(rm[2]) if rm and rm[2] else len(data) - 1
            if rm is None or first is None or first >= len(data) or last < first:
                raise _HubError(416, None, f"unsatisfiable range {rng}")
            last = min(last, len(data) - 1)
            status, body = 206, data[first : last + 1]
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        self._send(status, body, "application/octet-stream", headers, head)


# -- pytest fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Isolate huggingface_hub: temp HF_HOME/cache/token, no HF_TOKEN, no offline flag, dead default endpoint.

    The hub reads most of these at import time, so its ``constants`` are patched too, not only the environment.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import _http as hf_http

    home = tmp_path / "hf_home"
    (home / "hub").mkdir(parents=True)
    for var in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_TOKEN_PATH",
        "HF_OIDC_RESOURCE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_ENDPOINT", DEAD_ENDPOINT)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("ODEVAL_HASH_CACHE", str(tmp_path / "odeval_hashes.json"))
    patches = {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "ENDPOINT": DEAD_ENDPOINT,
        "HUGGINGFACE_CO_URL_TEMPLATE": DEAD_ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}",
    }
    for name, value in patches.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    saved_factory = hf_http._GLOBAL_CLIENT_FACTORY
    hf_http.set_client_factory(_loopback_only_client)  # also drops pooled connections from earlier tests
    try:
        yield home
    finally:
        hf_http.set_client_factory(saved_factory)


class NetworkRefused(RuntimeError):
    """A test made huggingface_hub address a non-loopback host (a bug in the test or the code under test)."""


def _refuse_non_loopback(request) -> None:  # noqa: ANN001 - httpx2.Request
    if request.url.host not in ("127.0.0.1", "localhost", "::1"):
        raise NetworkRefused(f"test tried to reach {request.url.host} ({request.method} {request.url})")


def _loopback_only_client():  # noqa: ANN202 - httpx2.Client
    """The hub's default client plus a request hook that refuses any non-loopback host before connecting."""
    from huggingface_hub.utils import _http as hf_http

    client = hf_http.default_client_factory()
    hooks = client.event_hooks
    client.event_hooks = {
        "request": [*hooks.get("request", []), _refuse_non_loopback],
        "response": list(hooks.get("response", [])),
    }
    return client


@pytest.fixture
def hub_server(hf_home: Path) -> Iterator[HubServer]:
    """A started :class:`HubServer` (empty; call ``add_repo``) with the Hub client isolated by ``hf_home``."""
    server = HubServer().start()
    try:
        yield server
    finally:
        server.stop()
