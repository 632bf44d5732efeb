"""pipeline.device.connect: selection, idempotence, re-connect after kill-server, one-line errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.device.adb import adb_path, adb_version, run_adb
from pipeline.device.connect import DeviceError, device_kind, device_props, get_device
from pipeline.virtual import ensure_running, status, stop
from tests.helpers.device import VirtualDevice, free_port


@pytest.fixture
def private_server() -> Iterator[int]:
    """A second adb server just for this test (so kill-server does not disturb the session one)."""
    port = free_port()
    assert run_adb(["start-server"], port=port).returncode == 0
    try:
        yield port
    finally:
        run_adb(["kill-server"], port=port)


def test_adb_wrapper() -> None:
    assert Path(adb_path()).is_file()
    assert adb_version().startswith("1.0.")


def test_props_and_kind(virtual_device: VirtualDevice) -> None:
    props = device_props(virtual_device.device)
    assert props["ro.product.model"] == "odeval-virtual" and props["ro.odeval.virtual"] == "1"
    assert all(props[k] for k in props)
    assert device_kind(virtual_device.device) == "virtual"


def test_virtual_idempotent_and_reconnect_after_kill_server(private_server: int, tmp_path: Path) -> None:
    port = free_port()
    root = tmp_path / "dev"
    try:
        d1 = get_device("virtual", adb_port=private_server, virtual_root=root, virtual_port=port)
        pid = status(root)["pid"]
        d2 = get_device("virtual", adb_port=private_server, virtual_root=root, virtual_port=port)
        assert d1.serial == d2.serial == f"127.0.0.1:{port}" and status(root)["pid"] == pid
        run_adb(["kill-server"], port=private_server)
        d3 = get_device("virtual", adb_port=private_server, virtual_root=root, virtual_port=port)
        assert d3.shell("echo back") == "back"
        with pytest.raises(Exception, match="already runs on port"):
            ensure_running(root, free_port())
    finally:
        run_adb(["disconnect", f"127.0.0.1:{port}"], port=private_server)
        stop(root)


def test_adb_kind_errors(private_server: int, tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="no device attached"):
        get_device("adb", adb_port=private_server)
    roots, serials = [tmp_path / "a", tmp_path / "b"], []
    try:
        for root in roots:
            serials.append(get_device("virtual", adb_port=private_server, virtual_root=root,
                                      virtual_port=free_port()).serial)
        with pytest.raises(DeviceError, match=r"several devices attached: .*set device\.serial=") as e:
            get_device("adb", adb_port=private_server)
        assert all(s in str(e.value) for s in serials) and "\n" not in str(e.value)
        assert get_device("adb", adb_port=private_server, serial=serials[1]).shell("echo ok") == "ok"
        stop(roots[0])  # the transport drops: the server shows it offline (or gone) once it has seen the EOF
        deadline = time.monotonic() + 15
        while f"{serials[0]}\tdevice" in run_adb(["devices"], port=private_server).stdout.decode() \
                and time.monotonic() < deadline:  # a loaded host: the adb server notices the drop a little later
            time.sleep(0.1)
        with pytest.raises(DeviceError, match="offline|did not appear"):
            get_device("adb", adb_port=private_server, serial=serials[0])
    finally:
        for root, serial in zip(roots, serials, strict=False):
            run_adb(["disconnect", serial], port=private_server)
            stop(root)
    with pytest.raises(DeviceError, match="not supported"):
        get_device("usb")


def test_adb_connect_addr_failure_is_one_line(private_server: int) -> None:
    with pytest.raises(DeviceError, match="adb connect 127.0.0.1:") as e:
        get_device("adb", adb_port=private_server, connect_addr=f"127.0.0.1:{free_port()}")
    assert "\n" not in str(e.value)


def test_two_virtual_devices_in_parallel(make_virtual_device) -> None:
    a, b = make_virtual_device(), make_virtual_device(capacity_bytes=1 << 30)
    assert a.serial != b.serial
    a.device.shell("echo A > /data/local/tmp/who")
    b.device.shell("echo B > /data/local/tmp/who")
    assert (a.device.shell("cat /data/local/tmp/who"), b.device.shell("cat /data/local/tmp/who")) == ("A", "B")
    assert b.device.shell("df -k").splitlines()[1].split()[1] == str(1 << 20)
