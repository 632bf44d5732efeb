"""Acceptance through the real adb binary (the one in the adbutils wheel) on a private server port."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.helpers.device import AdbServer, VirtualDevice, free_port

REPO = Path(__file__).resolve().parents[2]


def test_connect_lists_device(virtual_device: VirtualDevice, adb_server: AdbServer) -> None:
    out = adb_server.run("devices").stdout.decode()
    assert f"{virtual_device.serial}\tdevice" in out
    assert virtual_device.adb("get-state").stdout.decode().strip() == "device"


def test_shell_echo_exit_code_getprop(virtual_device: VirtualDevice) -> None:
    r = virtual_device.adb("shell", "echo", "hi")
    assert (r.returncode, r.stdout) == (0, b"hi\n")
    assert virtual_device.adb("shell", "exit 3").returncode == 3
    assert virtual_device.adb("shell", "nosuch").returncode == 127
    assert virtual_device.adb("shell", "getprop", "ro.product.model").stdout == b"odeval-virtual\n"


def test_shell_quoted_args_verbatim(virtual_device: VirtualDevice) -> None:
    args = ["; rm -rf /", "$(reboot)", "`id`", "it's \"q\"", "🦜 עברית", "a\\b", "*"]
    r = virtual_device.adb("shell", " ; ".join(f"echo {shlex.quote(a)}" for a in args))
    assert r.stdout.decode() == "".join(a + "\n" for a in args)


def test_push_pull_50mb_roundtrip(virtual_device: VirtualDevice, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(50_000_000))
    r = virtual_device.adb("push", str(src), "/data/local/tmp/odeval-test/big.bin")
    assert r.returncode == 0, r.stderr
    dst = tmp_path / "back.bin"
    r = virtual_device.adb("pull", "/data/local/tmp/odeval-test/big.bin", str(dst))
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    on_device = virtual_device.adb("shell", "sha256sum /data/local/tmp/odeval-test/big.bin").stdout.decode()
    assert on_device.split()[0] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert virtual_device.adb("shell", "stat -c %s /data/local/tmp/odeval-test/big.bin").stdout == b"50000000\n"
    virtual_device.adb("shell", "rm -rf /data/local/tmp/odeval-test")


def test_push_directory_and_pull_missing(virtual_device: VirtualDevice, tmp_path: Path) -> None:
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("A")
    (d / "sub" / "b.txt").write_text("B")
    assert virtual_device.adb("push", str(d), "/data/local/tmp/pushed").returncode == 0
    ls = virtual_device.adb("shell", "cat /data/local/tmp/pushed/a.txt /data/local/tmp/pushed/sub/b.txt")
    assert ls.stdout == b"AB"
    r = virtual_device.adb("pull", "/data/local/tmp/does-not-exist", str(tmp_path / "x"))
    assert r.returncode != 0 and b"No such file or directory" in r.stderr
    virtual_device.adb("shell", "rm -rf /data/local/tmp/pushed")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "pipeline.virtual", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=REPO)


def test_cli_start_idempotent_status_stop(tmp_path: Path) -> None:
    port = str(free_port())
    root = str(tmp_path / "dev")
    try:
        first = _cli("start", "--root", root, "--port", port)
        assert first.returncode == 0 and first.stdout.strip() == f"127.0.0.1:{port}", first.stderr
        pid = _cli("status", "--root", root).stdout
        again = _cli("start", "--root", root, "--port", port)
        assert again.stdout == first.stdout and _cli("status", "--root", root).stdout == pid
        assert (tmp_path / "dev" / "storage" / "data" / "local" / "tmp").is_dir()  # storage = the device's /
        state = tmp_path / "dev" / "state"  # host-only: pid file, log, lock, control file; never under storage
        assert (state / "adbd.json").is_file() and (state / "adbd.log").is_file()
        assert state.stat().st_mode & 0o777 == 0o700
        assert not list((tmp_path / "dev" / "storage").rglob("adbd.*"))
    finally:
        assert _cli("stop", "--root", root).stdout.strip() == "stopped"
    assert _cli("status", "--root", root).returncode == 1
    assert _cli("stop", "--root", root).stdout.strip() == "not running"


def test_cli_refuses_non_loopback(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "192.168.1.10", "example.com"):
        r = _cli("serve", "--root", str(tmp_path), "--host", host, "--port", str(free_port()))
        assert r.returncode == 2 and "loopback only" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
