"""pytest plugin: a private adb server and virtual devices driven through the real adb binary.

Fixtures:
- ``adb_server`` (session): a free port, ANDROID_ADB_SERVER_PORT set for the session, ``adb start-server`` with the
  bundled binary and a temporary HOME (so the server's RSA key ``$HOME/.android/adbkey`` is a throwaway one, never
  the user's), and ``adb -P port kill-server`` at the end (only the server we started).
- ``virtual_device`` (function, backed by one daemon per session): connected, faults cleared before and after.
  Attributes ``.serial .root .port .device .adb_port``, ``.storage`` (host dir of the device's ``/``) and
  ``.log_path``; ``.set_faults(**kw)``, ``.adb(*args)``, ``.reconnect()``.
- ``make_virtual_device`` (function): factory for extra daemons (e.g. two devices in parallel, or one started with
  the ``app_cmd`` test hook, which is fixed at start), stopped at teardown.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adbutils
import pytest

from pipeline.device.adb import adb_path, run_adb
from pipeline.device.connect import get_device
from pipeline.virtual import stop
from pipeline.virtual.faults import write_faults
from pipeline.virtual.layout import state_dir, storage_dir

__all__ = ["AdbServer", "VirtualDevice", "free_port", "adb_server", "virtual_device", "make_virtual_device"]


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AdbServer:
    port: int

    def run(self, *args: str, timeout: float = 30, input: bytes | None = None) -> subprocess.CompletedProcess:
        return run_adb(list(args), port=self.port, timeout=timeout, input=input)


@dataclass
class VirtualDevice:
    serial: str
    root: Path
    port: int
    adb_port: int
    device: adbutils.AdbDevice

    @property
    def storage(self) -> Path:
        """Host dir that is the device's ``/`` (``root/storage``)."""
        return storage_dir(self.root)

    @property
    def log_path(self) -> Path:
        """The daemon's log (host-side state dir)."""
        return state_dir(self.root) / "adbd.log"

    def set_faults(self, **faults: Any) -> None:
        """Replace the running daemon's faults (re-read on its next operation); no args clears them."""
        write_faults(self.root, **faults)

    def adb(self, *args: str, timeout: float = 60, input: bytes | None = None) -> subprocess.CompletedProcess:
        """``adb -P <server> -s <serial> <args>`` with the bundled binary."""
        return run_adb(["-s", self.serial, *args], port=self.adb_port, timeout=timeout, input=input)

    def reconnect(self) -> adbutils.AdbDevice:
        """Wait until the device is back in state ``device`` (e.g. after a dropped transport)."""
        self.device = get_device("virtual", adb_port=self.adb_port, virtual_root=self.root, virtual_port=self.port)
        return self.device


@pytest.fixture(scope="session")
def adb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdbServer]:
    port = free_port()
    home = tmp_path_factory.mktemp("adb-home")
    saved = {k: os.environ.get(k) for k in ("ANDROID_ADB_SERVER_PORT", "ADBUTILS_ADB_PATH")}
    os.environ["ANDROID_ADB_SERVER_PORT"] = str(port)
    os.environ["ADBUTILS_ADB_PATH"] = adb_path()
    proc = run_adb(["start-server"], port=port, timeout=30, env={"HOME": str(home)})
    if proc.returncode != 0:
        pytest.fail(f"cannot start adb server on port {port}: {proc.stderr.decode(errors='replace')}")
    try:
        yield AdbServer(port)
    finally:
        run_adb(["kill-server"], port=port, timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _start_device(root: Path, adb_port: int, port: int | None = None, **options: Any) -> VirtualDevice:
    port = port or free_port()
    dev = get_device("virtual", adb_port=adb_port, virtual_root=root, virtual_port=port, virtual_options=options)
    return VirtualDevice(serial=dev.serial, root=root, port=port, adb_port=adb_port, device=dev)


def _teardown_device(vd: VirtualDevice) -> None:
    run_adb(["disconnect", vd.serial], port=vd.adb_port, timeout=10)
    stop(vd.root)


@pytest.fixture(scope="session")
def _virtual_device_session(adb_server: AdbServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualDevice]:
    vd = _start_device(tmp_path_factory.mktemp("virtual-device"), adb_server.port)
    try:
        yield vd
    finally:
        _teardown_device(vd)


@pytest.fixture
def virtual_device(_virtual_device_session: VirtualDevice) -> Iterator[VirtualDevice]:
    vd = _virtual_device_session
    vd.set_faults()
    vd.reconnect()
    try:
        yield vd
    finally:
        vd.set_faults()


@pytest.fixture
def make_virtual_device(adb_server: AdbServer, tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[Callable[..., VirtualDevice]]:
    started: list[VirtualDevice] = []

    def make(**options: Any) -> VirtualDevice:
        vd = _start_device(tmp_path_factory.mktemp("virtual-device-extra"), adb_server.port, **options)
        started.append(vd)
        return vd

    try:
        yield make
    finally:
        for vd in started:
            _teardown_device(vd)
