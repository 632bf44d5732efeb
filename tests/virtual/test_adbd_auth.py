"""AUTH on the virtual device with the real adb binary: a server whose key is in the device's adb_keys gets
``device``; any other stays ``unauthorized`` and the pipeline says, in one line, what to do.

The adb server here runs with a temporary HOME, so the key it generates and offers (``$HOME/.android/adbkey``) is a
throwaway one: the real user's ~/.android is never read or written."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.device.adb import run_adb
from pipeline.device.connect import DeviceError, get_device
from pipeline.virtual import adb_keys_path, stop
from pipeline.virtual.layout import state_dir
from tests.helpers.device import free_port


@pytest.fixture
def isolated_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Path]]:
    """A private adb server whose HOME (hence adbkey) is a temp dir; yields (port, its adbkey.pub)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # also what the pipeline's message names as the host key
    monkeypatch.delenv("ADB_VENDOR_KEYS", raising=False)
    port = free_port()
    proc = run_adb(["start-server"], port=port, env={"HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    pub = home / ".android" / "adbkey.pub"
    assert pub.is_file()  # the server made its own key in the temp HOME
    try:
        yield port, pub
    finally:
        run_adb(["kill-server"], port=port)


def _state(port: int, serial: str) -> str:
    out = run_adb(["devices"], port=port).stdout.decode()
    return dict(line.split("\t") for line in out.splitlines()[1:] if "\t" in line).get(serial, "absent")


def test_unauthorized_then_key_added(isolated_server, tmp_path: Path) -> None:
    port, pub = isolated_server
    root, vport = tmp_path / "dev", free_port()
    keys = adb_keys_path(root)
    try:
        with pytest.raises(DeviceError) as err:
            get_device("virtual", adb_port=port, virtual_root=root, virtual_port=vport, virtual_options={"auth": True})
        msg = str(err.value)
        assert "\n" not in msg and "unauthorized" in msg
        assert str(keys) in msg and str(pub) in msg  # names both files: what to append where
        serial = f"127.0.0.1:{vport}"
        assert _state(port, serial) == "unauthorized"
        offered = pub.read_text().split()[0]
        deadline = time.monotonic() + 20  # the server sends its public key around the time connect gives up
        while offered not in (log := (state_dir(root) / "adbd.log").read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert offered in log  # the offered key is logged for the user to add

        keys.write_text(pub.read_text())  # what the message says to do
        run_adb(["disconnect", serial], port=port)
        dev = get_device("virtual", adb_port=port, virtual_root=root, virtual_port=vport,
                         virtual_options={"auth": True})
        assert _state(port, serial) == "device"
        assert dev.shell("echo authorized").strip() == "authorized"
    finally:
        stop(root)


def test_key_listed_gives_device_and_auth_off_restarts(isolated_server, tmp_path: Path) -> None:
    port, pub = isolated_server
    root, vport = tmp_path / "dev", free_port()
    keys = tmp_path / "elsewhere" / "my_adb_keys"  # an explicit path option
    keys.parent.mkdir()
    keys.write_text("# authorized hosts\n" + pub.read_text())
    try:
        dev = get_device("virtual", adb_port=port, virtual_root=root, virtual_port=vport,
                         virtual_options={"auth": True, "adb_keys": str(keys)})
        assert _state(port, dev.serial) == "device"
        assert dev.shell("echo ok").strip() == "ok"
        keys.write_text("")  # revoked: a new connection is refused again
        run_adb(["disconnect", dev.serial], port=port)
        with pytest.raises(DeviceError, match=str(keys)):
            get_device("virtual", adb_port=port, virtual_root=root, virtual_port=vport,
                       virtual_options={"auth": True, "adb_keys": str(keys)})
        # auth off (a config change) restarts the daemon without AUTH
        dev = get_device("virtual", adb_port=port, virtual_root=root, virtual_port=vport,
                         virtual_options={"auth": False})
        assert dev.shell("echo open").strip() == "open"
    finally:
        stop(root)
        assert os.path.exists(keys)  # never deleted by the daemon


def test_config_keys_validate_and_reach_the_daemon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`device.virtual.auth=true` is a switch, not a secret; open_device hands auth/adb_keys to the daemon."""
    from pipeline.config import compose, to_config
    from pipeline.device.select import open_device
    from pipeline.secrets import redact

    cfg = to_config(compose(["device.virtual.auth=true", "device.virtual.adb_keys=keys/adb_keys"]))
    assert cfg.device.virtual.auth is True and cfg.device.adb_host is None
    assert redact({"auth": True})["auth"] is True and redact({"auth": "user:pw"})["auth"] == "***"
    seen: dict = {}

    def fake_get_device(kind, **kw):
        seen.update(kw["virtual_options"])
        return "dev"

    monkeypatch.setattr("pipeline.device.select.get_device", fake_get_device)
    monkeypatch.setenv("ODEVAL_ROOT", str(tmp_path))
    assert open_device(cfg.device, job="push") == "dev"
    assert seen["auth"] is True and Path(seen["adb_keys"]).is_absolute() and seen["adb_keys"].endswith("keys/adb_keys")
