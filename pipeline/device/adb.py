"""The one adb wrapper: one adb binary, one way to find the adb server, and never killing a server we did not start.

Why: an adb client whose version differs from the running server kills and restarts that server ("adb server version
(X) doesn't match this client (Y); killing..."), dropping every device of whoever started it (Android Studio, another
tool). So before the bundled binary talks to a server we ask the server its version over the socket (``host:version``,
what adb itself does first) and refuse to run a mismatching binary against it.

Server address, resolved like adb's own command line does it (commandline.cpp), config playing the role of -H/-P:
1. ``device.adb_host`` / ``device.adb_port`` (either set): that server; a missing half comes from
   ``ANDROID_ADB_SERVER_ADDRESS`` / ``ANDROID_ADB_SERVER_PORT``, then 127.0.0.1 / 5037. ``ADB_SERVER_SOCKET`` ignored.
2. ``ADB_SERVER_SOCKET=tcp:[host:]port`` (other socket specs, e.g. ``localabstract:``, are refused with a message).
3. ``ANDROID_ADB_SERVER_ADDRESS`` / ``ANDROID_ADB_SERVER_PORT``.
4. 127.0.0.1:5037.
``run_adb`` passes ``-H``/``-P`` only for case 1 (so the binary itself honours the environment like every adb).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import adbutils

__all__ = ["AdbToolError", "AdbServer", "adb_path", "adb_server_port", "resolve_server", "server_version",
           "client_version", "check_server_version", "run_adb", "adb_client", "adb_version"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5037
LOOPBACK = ("127.0.0.1", "localhost", "::1")
NO_SERVER_COMMANDS = {"version", "--version", "help", "--help", "keygen"}  # adb commands that never reach a server


class AdbToolError(Exception):
    """The adb binary is missing or unusable, the server address is bad, or the server's version differs."""


def adb_path() -> str:
    """``$ODEVAL_ADB`` if set (e.g. the adb of the server already running), else the adb in the adbutils wheel
    (made executable if needed), else ``adb`` on PATH."""
    chosen = os.environ.get("ODEVAL_ADB")
    if chosen:
        path = shutil.which(chosen) or chosen
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise AdbToolError(f"ODEVAL_ADB={chosen!r} is not an executable adb binary; fix or unset it")
        return path
    bundled = Path(adbutils.__file__).resolve().parent / "binaries" / ("adb.exe" if os.name == "nt" else "adb")
    if bundled.is_file():
        mode = bundled.stat().st_mode
        if not mode & stat.S_IXUSR:
            try:
                bundled.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            except OSError:
                pass
        if os.access(bundled, os.X_OK):
            return str(bundled)
    found = shutil.which("adb")
    if found:
        return found
    raise AdbToolError("no adb binary: reinstall adbutils (`pip install --force-reinstall adbutils`) "
                       "or put platform-tools' adb on PATH")


@dataclass(frozen=True)
class AdbServer:
    """Where the adb server is, and whether it came from config (then adb gets ``-H``/``-P``)."""

    host: str
    port: int
    source: str  # config | ADB_SERVER_SOCKET | ANDROID_ADB_SERVER_ADDRESS/PORT | default
    explicit: bool

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _port(value: str, name: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise AdbToolError(f"{name}={value!r} is not a port number (1-65535); fix or unset it")
    return port


def _parse_socket_spec(spec: str) -> tuple[str, int]:
    """``tcp:5037`` / ``tcp:host:5037`` → (host, port); anything else is an error naming the value."""
    m = re.fullmatch(r"tcp:(?:(\[[^\]]+\]|[^:]+):)?(\d+)", spec.strip())
    if not m:
        raise AdbToolError(f"ADB_SERVER_SOCKET={spec!r} is not supported: odeval reaches the adb server over TCP "
                           "only; use tcp:<host>:<port> (e.g. tcp:127.0.0.1:5037) or unset it")
    host = (m.group(1) or DEFAULT_HOST).strip("[]")
    return ("127.0.0.1" if host == "localhost" else host), _port(m.group(2), "ADB_SERVER_SOCKET port")


def resolve_server(host: str | None = None, port: int | None = None,
                   env: Mapping[str, str] | None = None) -> AdbServer:
    """The adb server to use: config (``device.adb_host/adb_port``) > ADB_SERVER_SOCKET > ANDROID_ADB_SERVER_ADDRESS
    /PORT > 127.0.0.1:5037 — adb's own order, config standing in for its -H/-P flags."""
    env = os.environ if env is None else env
    env_host = env.get("ANDROID_ADB_SERVER_ADDRESS") or None
    env_port = env.get("ANDROID_ADB_SERVER_PORT") or None
    if host or port:
        return AdbServer(host or env_host or DEFAULT_HOST,
                         port or (_port(env_port, "ANDROID_ADB_SERVER_PORT") if env_port else DEFAULT_PORT),
                         "config", True)
    spec = env.get("ADB_SERVER_SOCKET")
    if spec:
        h, p = _parse_socket_spec(spec)
        return AdbServer(h, p, "ADB_SERVER_SOCKET", False)
    if env_host or env_port:
        return AdbServer(env_host or DEFAULT_HOST,
                         _port(env_port, "ANDROID_ADB_SERVER_PORT") if env_port else DEFAULT_PORT,
                         "ANDROID_ADB_SERVER_ADDRESS/PORT", False)
    return AdbServer(DEFAULT_HOST, DEFAULT_PORT, "default", False)


def adb_server_port() -> int:
    """The port of the server the environment names (see module doc); kept for callers that only need a port."""
    return resolve_server().port


def server_version(host: str, port: int, timeout: float = 3.0) -> int | None:
    """The running server's protocol version via ``host:version`` (e.g. 41), or None when nothing listens there.

    Raises AdbToolError when something listens but does not answer like an adb server."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    with sock:
        try:
            sock.sendall(b"000chost:version")
            data = b""
            while len(data) < 12:
                chunk = sock.recv(12 - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            raise AdbToolError(f"{host}:{port} accepted a connection but did not answer host:version ({e}); "
                               "is it an adb server?") from None
    if len(data) != 12 or data[:4] != b"OKAY":
        raise AdbToolError(f"{host}:{port} is not an adb server (answered {data[:12]!r} to host:version); "
                           "point device.adb_port / ANDROID_ADB_SERVER_PORT at an adb server")
    try:
        return int(data[8:12], 16)
    except ValueError:
        raise AdbToolError(f"{host}:{port} answered host:version with {data[4:12]!r}, not a version") from None


_CLIENT_VERSION: dict[str, int] = {}


def client_version(path: str | None = None) -> int:
    """Protocol version of our adb binary (``Android Debug Bridge version 1.0.41`` → 41)."""
    path = path or adb_path()
    if path not in _CLIENT_VERSION:
        proc = subprocess.run([path, "version"], capture_output=True, text=True, timeout=10, check=False)
        m = re.search(r"version \d+\.\d+\.(\d+)", proc.stdout)
        if not m:
            raise AdbToolError(f"`{path} version` printed no version ({proc.stdout.strip()[:80]!r}); "
                               "set ODEVAL_ADB to a working adb")
        _CLIENT_VERSION[path] = int(m.group(1))
    return _CLIENT_VERSION[path]


def check_server_version(server: AdbServer) -> int | None:
    """Fail (one line, both versions, what to do) if a server of another version runs at ``server``: our adb would
    kill it. Returns the running server's version, or None if none runs (ours may then start one)."""
    running = server_version(server.host, server.port)
    if running is None:
        return None
    ours = client_version()
    if running != ours:
        raise AdbToolError(
            f"the adb server at {server} ({server.source}) is version {running} (1.0.{running}) but odeval's adb "
            f"({adb_path()}) is version {ours} (1.0.{ours}); running ours would kill that server and drop its "
            f"devices, so odeval will not. Either set ODEVAL_ADB=<the adb 1.0.{running} that started it, e.g. "
            "Android Studio's platform-tools/adb>, or stop that server with its own adb (`adb kill-server`), or "
            "use another port (device.adb_port / ANDROID_ADB_SERVER_PORT)")
    return running


_CHECKED: set[tuple[str, int]] = set()


def run_adb(args: list[str], *, port: int | None = None, timeout: float = 30, input: bytes | None = None,
            host: str | None = None, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``adb [-H host -P port] <args>`` (argv list, never a shell string) and capture its output.

    ``host``/``port`` are explicit config (passed as -H/-P); without them adb resolves the server from the
    environment exactly as :func:`resolve_server` does. A server of another version is never touched (see
    :func:`check_server_version`). ``env``: extra environment for the adb process (e.g. an isolated HOME whose
    ``.android/adbkey`` a started server will use)."""
    server = resolve_server(host, port, {**os.environ, **(env or {})})
    cmd = [adb_path()]
    if server.explicit:
        if server.host not in LOOPBACK:
            cmd += ["-H", server.host]
        cmd += ["-P", str(server.port)]
    cmd += args
    key = (server.host, server.port)
    if not set(args[:1]) & NO_SERVER_COMMANDS and key not in _CHECKED and check_server_version(server) is not None:
        _CHECKED.add(key)  # a matching server stays matching for our process
    try:
        return subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, check=False,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              env={**os.environ, **env} if env else None)
    except subprocess.TimeoutExpired:
        raise AdbToolError(f"`adb {' '.join(args)}` did not finish within {timeout:g}s; is the device/server "
                           "responsive? try `adb kill-server`") from None
    except OSError as e:
        raise AdbToolError(f"cannot run {cmd[0]}: {e}") from None


class _PromptClose(adbutils.AdbConnection):
    """adbutils' connection without the 10 ms sleep in ``close()``.

    WHY: adbutils 2.12 sleeps 10 ms after ``shutdown(SHUT_WR)`` on every close, and opens (and closes) a second
    connection per ``open_transport`` to ask the server version: 20 ms of sleeping per device command. Every
    ``adb shell`` of push/run/telemetry/preflight paid it (22 ms per round trip, measured; 0.6 ms without). The
    FIN still goes out: ``shutdown`` then ``close``.
    """

    def close(self) -> None:
        sock = getattr(self, "_AdbConnection__conn", None)
        if not isinstance(sock, socket.socket):
            return super().close()
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()
        self._AdbConnection__conn = None


class _Client(adbutils.AdbClient):
    """The one adbutils client we use: connections close without sleeping and send without Nagle's delay; the
    server version is asked once per client (adbutils asks it before every transport). A server restarted
    meanwhile is the same binary, so the version cannot change under a client (``run_adb`` and
    ``check_server_version`` refuse foreign servers)."""

    _server_version: int | None = None

    def make_connection(self, timeout: float | None = None) -> adbutils.AdbConnection:
        conn = super().make_connection(timeout)
        conn.__class__ = _PromptClose
        if isinstance(conn.conn, socket.socket):
            # small writes back to back (sync SEND, DATA, DONE) otherwise wait for the server's delayed ACK: a
            # small file's push took 44 ms instead of 1.4 ms (measured)
            conn.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def server_version(self) -> int:
        if self._server_version is None:
            self._server_version = super().server_version()
        return self._server_version


def adb_client(host: str | None = None, port: int | None = None) -> adbutils.AdbClient:
    """An adbutils client for the resolved server; adbutils' auto-start will use our binary too."""
    server = resolve_server(host, port)
    os.environ.setdefault("ADBUTILS_ADB_PATH", adb_path())
    return _Client(host=server.host, port=server.port)


def adb_version() -> str:
    """``1.0.41 (36.0.0-13206524)``-style version of the adb binary we use (no server needed)."""
    proc = subprocess.run([adb_path(), "version"], capture_output=True, text=True, timeout=10, check=False)
    lines = proc.stdout.splitlines()
    proto = lines[0].rsplit(" ", 1)[-1] if lines else "unknown"
    tools = next((ln.split(" ", 1)[1] for ln in lines if ln.startswith("Version ")), "")
    return f"{proto} ({tools})" if tools else proto
