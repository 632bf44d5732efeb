"""adbutils (2.12) against the virtual device: shell, shell2(v2=True), sync push/pull/stat/list."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import adbutils
import pytest

from tests.helpers.device import VirtualDevice


def test_shell_and_shell2_v2(virtual_device: VirtualDevice) -> None:
    d = virtual_device.device
    assert d.shell("echo hi") == "hi"
    r = d.shell2("echo out; echo err >&2; exit 5", v2=True)
    assert (r.returncode, r.stdout, r.stderr) == (5, "out\n", "err\n")
    assert d.shell2(["echo", "a b", "$(x)"], v2=True).stdout == "a b $(x)\n"
    assert "shell_v2" in d.get_features()


def test_sync_push_stat_list_pull(virtual_device: VirtualDevice, tmp_path: Path) -> None:
    d = virtual_device.device
    data = os.urandom(3 * 1024 * 1024 + 17)  # several 64 KiB chunks and WRTEs, odd tail
    d.sync.push(data, "/data/local/tmp/ut/blob.bin", mode=0o640)
    info = d.sync.stat("/data/local/tmp/ut/blob.bin")
    assert info.size == len(data) and stat.S_ISREG(info.mode) and stat.S_IMODE(info.mode) == 0o640
    assert d.sync.stat("/data/local/tmp/ut/missing").mtime is None
    names = {f.path for f in d.sync.list("/data/local/tmp/ut")}
    assert "blob.bin" in names
    assert d.sync.read_bytes("/data/local/tmp/ut/blob.bin") == data
    d.sync.pull("/data/local/tmp/ut/blob.bin", tmp_path / "blob.bin")
    assert (tmp_path / "blob.bin").read_bytes() == data
    with pytest.raises(adbutils.AdbError):
        d.sync.read_bytes("/data/local/tmp/ut/missing")
    d.shell("rm -rf /data/local/tmp/ut")
