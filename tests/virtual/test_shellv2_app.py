"""ShellV2 with streamed stdin to a line REPL launched as `simple_app` on the virtual device (stand-in app)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.device.shellv2 import ShellV2
from tests.helpers.device import VirtualDevice, _start_device, _teardown_device

REPL = Path(__file__).with_name("repl_app.py")
APP_DIR = "/data/local/tmp/odeval/apps/x"
MODEL_DIR = "/data/local/tmp/odeval/models/m"


@pytest.fixture(scope="module")
def _app_daemon(adb_server, tmp_path_factory) -> Iterator[VirtualDevice]:
    """A daemon started with the app_cmd test hook (fixed at start: nothing on the device can change it)."""
    vd = _start_device(tmp_path_factory.mktemp("app-device"), adb_server.port, app_cmd=[sys.executable, str(REPL)])
    try:
        yield vd
    finally:
        _teardown_device(vd)


@pytest.fixture
def app_device(_app_daemon: VirtualDevice) -> Iterator[VirtualDevice]:
    d = _app_daemon.reconnect()
    _app_daemon.set_faults()
    d.sync.push(b"\x7fELF fake arm binary", f"{APP_DIR}/simple_app", mode=0o755)
    d.sync.push(b"x", f"{MODEL_DIR}/tokenizer.bin")
    yield _app_daemon
    _app_daemon.set_faults()


def read_until(sh: ShellV2, marker: bytes, timeout: float = 20) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf:
        pkt = sh.read(max(0.0, deadline - time.monotonic()))
        if pkt is None:
            raise AssertionError(f"timeout waiting for {marker!r}; got {buf!r}")
        buf += pkt[1]
    return buf


def launch(dev: VirtualDevice, extra: str = "") -> ShellV2:
    cmd = f"cd {APP_DIR} && {extra}LD_LIBRARY_PATH=. ./simple_app {shlex.quote(MODEL_DIR)} 8gen3"
    return ShellV2.open(dev.device, cmd)


def test_repl_streams_prompts_and_replies(app_device: VirtualDevice) -> None:
    with launch(app_device) as sh:
        assert read_until(sh, b">>> ").startswith(b"Hello, how can I help you today?")
        for prompt in ("tell me a joke.", "héllo 🦜 $(reboot) `id` ; rm -rf /"):
            sh.write(prompt.encode() + b"\n")
            out = read_until(sh, b">>> ")
            assert out.startswith(" ".join(prompt.split()).encode()) and b"tok/s)" in out
        sh.write(b"!err\n")
        got: list[tuple[int, bytes]] = []
        # stdout and stderr are separate pipes pumped by separate threads: both must arrive, in either order
        while not (any(k == 1 and b">>> " in p for k, p in got) and any(k == 2 for k, _ in got)):
            pkt = sh.read(10)
            assert pkt is not None, got
            got.append(pkt)
        assert b"".join(p for k, p in got if k == 2) == b"to stderr\n"
        sh.write(b"!exit\n")
        with pytest.raises(EOFError):
            while True:
                assert sh.read(10) is not None
        assert sh.exit_code == 0


def test_split_packets_large_stdin(app_device: VirtualDevice) -> None:
    line = ("word " * 40_000).strip()  # 200 KB line: spans several stdin packets and WRTEs
    with launch(app_device) as sh:
        read_until(sh, b">>> ")
        sh.write(line.encode() + b"\n")
        out = read_until(sh, b">>> ", timeout=60)
        assert out.count(b"word") == 40_000


def test_app_argv_cwd_env_and_faults(app_device: VirtualDevice) -> None:
    app_device.set_faults(app_crash_after_tokens=5, app_hang=True, app_invalid_utf8=True, standin_model="/host/model")
    with launch(app_device, extra="MYVAR='a b' ODEVAL_TEMPLATE=raw ") as sh:
        read_until(sh, b">>> ")
        sh.write(b"!info\n")
        info = json.loads(read_until(sh, b"\n>>> ").split(b"\n>>> ")[0])
        sh.write(b"!exit\n")
    root = app_device.storage.resolve()
    assert info["argv"] == [MODEL_DIR, "8gen3"]  # device paths; the app resolves them in-root (ODEVAL_ROOT_FD)
    assert os.path.realpath(info["cwd"]) == str(root / APP_DIR.lstrip("/"))  # the shell's cwd
    env = info["env"]
    assert env["ODEVAL_DEVICE_CWD"] == APP_DIR and env["ODEVAL_TEMPLATE"] == "raw"
    assert os.path.realpath(info["root"]) == str(root)  # the inherited fd is the device's /
    assert "MYVAR" not in env and env["ODEVAL_DEVICE_LD_LIBRARY_PATH"] == "."  # allowlist: MYVAR is refused
    assert "LD_LIBRARY_PATH" not in env
    assert env["ODEVAL_FAULT_CRASH_AFTER_TOKENS"] == "5" and env["ODEVAL_FAULT_HANG"] == "1"
    assert env["ODEVAL_FAULT_INVALID_UTF8"] == "1" and env["ODEVAL_STANDIN_MODEL"] == "/host/model"


def _host_pid_alive(pid: int) -> bool:
    try:
        return b"repl_app" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_exec_pid_kill_and_proc_status(app_device: VirtualDevice) -> None:
    """`echo $$; exec simple_app`: the app gets the session pid; another shell can read its status and kill it."""
    with ShellV2.open(app_device.device, f"echo $$; cd {APP_DIR} && exec ./simple_app {MODEL_DIR}") as sh:
        vpid = int(read_until(sh, b"\n").split(b"\n")[0])
        read_until(sh, b">>> ")
        sh.write(b"!pid\n")
        host_pid = int(read_until(sh, b"\n>>> ").split(b"\n")[0])
        d = app_device.device
        assert str(vpid) in d.shell("pidof simple_app").split()
        status = d.shell(f"cat /proc/{vpid}/status")
        assert f"Pid:\t{vpid}" in status and "VmRSS:" in status and "Name:\tsimple_app" in status
        sh.write(b"!sleep\n")
        assert d.shell2(f"kill -9 {vpid}").returncode == 0
        with pytest.raises(EOFError):
            while True:
                sh.read(10)
        assert sh.exit_code == 137
    assert not _host_pid_alive(host_pid)


def test_closing_the_stream_kills_the_app(app_device: VirtualDevice) -> None:
    sh = launch(app_device)
    read_until(sh, b">>> ")
    sh.write(b"!pid\n")
    host_pid = int(read_until(sh, b"\n>>> ").split(b"\n")[0])
    sh.write(b"!sleep\n")
    sh.close()
    deadline = time.monotonic() + 10
    while _host_pid_alive(host_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _host_pid_alive(host_pid)
    assert "simple_app" not in app_device.device.shell("ps")


def test_other_executables_refused_and_missing_app(app_device: VirtualDevice) -> None:
    d = app_device.device
    d.sync.push(b"#!/bin/sh\necho pwned\n", "/data/local/tmp/tool", mode=0o755)
    r = d.shell2("/data/local/tmp/tool", v2=True)
    assert r.returncode == 126 and "cannot execute" in r.stderr and "pwned" not in r.stdout
