"""Injected faults on a running daemon (control file re-read per operation)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.device import VirtualDevice

DEST = "/data/local/tmp/faults/model.bin"


def _partials(vd: VirtualDevice) -> list[str]:
    d = vd.storage / "data/local/tmp/faults"
    return [p.name for p in d.iterdir()] if d.exists() else []


def test_push_interrupted_leaves_no_partial_and_retry_succeeds(virtual_device: VirtualDevice, tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(8_000_000))
    virtual_device.set_faults(drop_push_after_bytes=3_000_000)
    r = virtual_device.adb("push", str(src), DEST, timeout=60)
    assert r.returncode != 0
    assert b"adb: error" in r.stderr, r.stderr
    assert _partials(virtual_device) == []  # neither the destination name nor a temp file remains
    virtual_device.set_faults()
    virtual_device.reconnect()
    r = virtual_device.adb("push", str(src), DEST, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (virtual_device.storage / DEST.lstrip("/")).read_bytes() == src.read_bytes()
    assert _partials(virtual_device) == ["model.bin"]
    virtual_device.adb("shell", "rm -rf /data/local/tmp/faults")


def test_disk_full_clear_error_and_df(virtual_device: VirtualDevice, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 200_000)
    virtual_device.set_faults(disk_full=True)
    r = virtual_device.adb("push", str(src), DEST)
    assert r.returncode != 0 and b"No space left on device" in r.stderr
    assert _partials(virtual_device) == []
    avail = virtual_device.adb("shell", "df -k /data/local/tmp").stdout.decode().splitlines()[1].split()[3]
    assert avail == "0"
    import adbutils
    import pytest

    with pytest.raises(adbutils.AdbError):
        virtual_device.device.sync.push(b"abc", DEST)
    virtual_device.set_faults()
    assert virtual_device.adb("push", str(src), DEST).returncode == 0
    virtual_device.adb("shell", "rm -rf /data/local/tmp/faults")


def test_thermal_files_follow_faults_file(virtual_device: VirtualDevice) -> None:
    path = "/sys/class/thermal/thermal_zone0/temp"
    assert virtual_device.device.shell2(f"cat {path}").returncode == 1
    virtual_device.set_faults(simulate_thermal=True)
    assert int(virtual_device.device.shell(f"cat {path}")) > 0
    assert virtual_device.device.sync.stat("/sys/class/power_supply/battery/current_now").size > 0
    virtual_device.set_faults()
    assert virtual_device.device.shell2(f"cat {path}").returncode == 1


def test_capacity_is_enforced_like_df_reports(make_virtual_device, tmp_path: Path) -> None:
    vd = make_virtual_device(capacity_bytes=2_000_000)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3_000_000))
    r = vd.adb("push", str(src), "/data/local/tmp/big.bin")
    assert r.returncode != 0 and b"No space left on device" in r.stderr
    assert not (vd.storage / "data/local/tmp/big.bin").exists()
    small = tmp_path / "small.bin"
    small.write_bytes(b"y" * 500_000)
    assert vd.adb("push", str(small), "/data/local/tmp/small.bin").returncode == 0
