"""Which adb server odeval talks to (adb's own rules) and that it never kills one of another version."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from pipeline.device import adb as adbmod
from pipeline.device.adb import AdbToolError, client_version, resolve_server, run_adb, server_version
from pipeline.device.connect import DeviceError, get_device
from tests.helpers.device import free_port

ENV_KEYS = ("ADB_SERVER_SOCKET", "ANDROID_ADB_SERVER_ADDRESS", "ANDROID_ADB_SERVER_PORT")


@pytest.mark.parametrize(("config", "env", "expected"), [
    ((None, None), {}, ("127.0.0.1", 5037, "default", False)),
    ((None, None), {"ANDROID_ADB_SERVER_PORT": "6000"}, ("127.0.0.1", 6000, "ANDROID_ADB_SERVER_ADDRESS/PORT", False)),
    ((None, None), {"ANDROID_ADB_SERVER_ADDRESS": "10.0.0.2"}, ("10.0.0.2", 5037, "ANDROID_ADB_SERVER_ADDRESS/PORT",
                                                               False)),
    ((None, None), {"ADB_SERVER_SOCKET": "tcp:lab:7000", "ANDROID_ADB_SERVER_PORT": "6000"},
     ("lab", 7000, "ADB_SERVER_SOCKET", False)),  # ADB_SERVER_SOCKET beats ADDRESS/PORT, as in adb
    ((None, None), {"ADB_SERVER_SOCKET": "tcp:7001"}, ("127.0.0.1", 7001, "ADB_SERVER_SOCKET", False)),
    ((None, 8000), {"ADB_SERVER_SOCKET": "tcp:lab:7000", "ANDROID_ADB_SERVER_ADDRESS": "10.0.0.2"},
     ("10.0.0.2", 8000, "config", True)),  # config = adb -P: ADB_SERVER_SOCKET ignored, the host half from env
    (("remote", None), {"ANDROID_ADB_SERVER_PORT": "6000"}, ("remote", 6000, "config", True)),
])
def test_resolution_order(config, env, expected) -> None:
    s = resolve_server(*config, env=env)
    assert (s.host, s.port, s.source, s.explicit) == expected


@pytest.mark.parametrize(("env", "needle"), [
    ({"ADB_SERVER_SOCKET": "localabstract:adb"}, "ADB_SERVER_SOCKET='localabstract:adb'"),
    ({"ANDROID_ADB_SERVER_PORT": "50x"}, "ANDROID_ADB_SERVER_PORT='50x'"),
    ({"ADB_SERVER_SOCKET": "tcp:host:99999"}, "99999"),
])
def test_bad_environment_is_one_clear_line(env, needle, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AdbToolError) as err:
        resolve_server(env=env)
    assert needle in str(err.value) and "\n" not in str(err.value)
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(DeviceError, match="ANDROID_ADB_SERVER_PORT|ADB_SERVER_SOCKET"):
        get_device("adb")


class FakeServer:
    """A TCP responder that answers ``host:version`` like an adb server of another version and records every
    request; anything else (host:kill, host:devices…) is recorded and answered with FAIL."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    n = int(conn.recv(4, socket.MSG_WAITALL), 16)
                    req = conn.recv(n, socket.MSG_WAITALL)
                except (OSError, ValueError):
                    continue
                self.requests.append(req)
                if req == b"host:version":
                    conn.sendall(b"OKAY0004" + f"{self.version:04x}".encode())
                else:
                    conn.sendall(b"FAIL0007refused")

    def alive(self) -> bool:
        return server_version("127.0.0.1", self.port) == self.version

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def old_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    ours = client_version()
    fake = FakeServer(ours - 2)  # e.g. 39 (adb 1.0.39) next to our 41
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(fake.port))
    try:
        yield fake
    finally:
        fake.close()


def test_other_version_server_is_never_killed(old_server: FakeServer) -> None:
    ours, theirs = client_version(), old_server.version
    with pytest.raises(DeviceError) as err:
        get_device("adb")
    msg = str(err.value)
    assert "\n" not in msg
    assert f"version {theirs} (1.0.{theirs})" in msg and f"version {ours} (1.0.{ours})" in msg
    assert "ODEVAL_ADB" in msg and "kill-server" in msg
    with pytest.raises(AdbToolError, match=f"version {theirs}"):
        run_adb(["devices"])  # the bundled binary is not even launched against it
    # only our own version probes reached it: a launched adb would have sent host:version and then host:kill
    assert old_server.requests and set(old_server.requests) == {b"host:version"}
    assert old_server.alive()


def test_odeval_adb_of_the_servers_version_is_used(old_server: FakeServer, tmp_path, monkeypatch) -> None:
    """The way out the message offers: ODEVAL_ADB pointing at an adb of the running server's version."""
    fake_adb = tmp_path / "adb"
    fake_adb.write_text(f"#!/bin/sh\necho 'Android Debug Bridge version 1.0.{old_server.version}'\necho \"$@\" >> "
                        f"{tmp_path}/calls\n")
    fake_adb.chmod(0o755)
    monkeypatch.setenv("ODEVAL_ADB", str(fake_adb))
    monkeypatch.setattr(adbmod, "_CHECKED", set())
    proc = run_adb(["devices"])
    assert proc.returncode == 0
    # its version was asked, then the command ran without -P (adb reads the same environment itself)
    assert (tmp_path / "calls").read_text().splitlines() == ["version", "devices"]


def test_env_only_server_gets_no_P_flag(adb_server, monkeypatch: pytest.MonkeyPatch) -> None:
    """ADB_SERVER_SOCKET alone reaches the session's server; run_adb does not override it with -P."""
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ADB_SERVER_SOCKET", f"tcp:127.0.0.1:{adb_server.port}")
    proc = run_adb(["devices"])
    assert proc.returncode == 0 and "-P" not in proc.args
    assert run_adb(["devices"], port=adb_server.port).args[1:3] == ["-P", str(adb_server.port)]


def test_no_server_listening_returns_none() -> None:
    assert server_version("127.0.0.1", free_port()) is None
