"""One way for stages to obtain an adbutils device — the virtual one or a real phone — with one-line errors.

Why a module of its own: the failure modes of device selection (no server, no device, several, unauthorized,
offline, a TCP device forgotten after ``adb kill-server``) are what users hit first; each gets a message that says
what to do.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import adbutils

from pipeline.device.adb import (
    AdbServer,
    AdbToolError,
    adb_client,
    adb_version,
    check_server_version,
    resolve_server,
    run_adb,
)

__all__ = ["DeviceError", "get_device", "device_props", "device_kind", "DEFAULT_VIRTUAL_ROOT", "PROP_KEYS"]

DEFAULT_VIRTUAL_ROOT = Path("~/.cache/odeval/virtual-device")
PROP_KEYS = ("ro.product.model", "ro.product.manufacturer", "ro.soc.model", "ro.board.platform",
             "ro.build.version.release", "ro.build.fingerprint", "ro.product.cpu.abi", "ro.odeval.virtual",
             "ro.odeval.sandbox")
WAIT_DEVICE_S = 30.0
RECONNECT_AFTER_S = 2.0


class DeviceError(Exception):
    """No usable device; the message names the problem and the fix."""


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def _run(server: AdbServer, args: list[str], timeout: float) -> Any:
    """run_adb against ``server``: -H/-P only when the config named it, else adb reads the same environment."""
    if server.explicit:
        return run_adb(args, host=server.host, port=server.port, timeout=timeout)
    return run_adb(args, timeout=timeout)


def _ensure_server(server: AdbServer) -> None:
    """Make sure an adb server of our adb's version answers at ``server`` (start one locally if none runs).

    A server of another version is never restarted: that would drop the devices of whoever started it."""
    host, port = server.host, server.port
    try:
        running = check_server_version(server)
    except AdbToolError as e:
        raise DeviceError(str(e)) from None
    if running is not None:
        return
    if not _is_loopback(host):
        raise DeviceError(f"no adb server at {server} ({server.source}); start one there with "
                          f"`adb -a -P {port} nodaemon server` or fix device.adb_host/adb_port")
    try:
        proc = _run(server, ["start-server"], timeout=30)
    except AdbToolError as e:
        raise DeviceError(f"cannot start an adb server at {server}: {e}") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise DeviceError(f"cannot start an adb server at {server}: {msg[0]}; free the port or set "
                          "device.adb_port / ANDROID_ADB_SERVER_PORT")


def _list(client: adbutils.AdbClient) -> list[adbutils.AdbDeviceInfo]:
    try:
        return client.list()
    except (adbutils.AdbError, OSError) as e:
        raise DeviceError(f"adb server {client.host}:{client.port} does not answer ({e}); "
                          f"run `adb -P {client.port} kill-server` and retry") from None


def _adb_connect(addr: str, server: AdbServer, adb_keys: str | None = None) -> None:
    try:
        proc = _run(server, ["connect", addr], timeout=20)
    except AdbToolError as e:
        raise DeviceError(f"adb connect {addr}: {e}") from None
    out = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    if "failed to authenticate" in out:  # the device refused every key the server offered (AUTH)
        raise _state_error(addr, "unauthorized", adb_keys)
    if "connected to" not in out:  # "connected to" and "already connected to" both mean success
        raise DeviceError(f"adb connect {addr} failed: {out or 'no output'}; is the device listening on that "
                          "address (for the virtual device: `python -m pipeline.virtual status`)?")


def host_adbkey_pub() -> Path:
    """The public key an adb server started by us offers: ``$HOME/.android/adbkey.pub`` (adb reads only HOME)."""
    return Path(os.environ.get("HOME") or Path.home()) / ".android" / "adbkey.pub"


def _state_error(serial: str, state: str, adb_keys: str | None = None) -> DeviceError:
    if state == "unauthorized" and adb_keys:
        return DeviceError(f"virtual device {serial} is unauthorized: its adb_keys file {adb_keys} does not list "
                           f"this host's adb key; append it (`cat {host_adbkey_pub()} >> {adb_keys}`; the key of "
                           "the adb server's HOME) or set device.virtual.auth=false, then retry")
    if state == "unauthorized":
        return DeviceError(f"device {serial} is unauthorized: accept the RSA prompt 'Allow USB debugging?' on the "
                           f"phone (tick 'Always allow from this computer'; the host key is {host_adbkey_pub()}); "
                           "no prompt? unplug/replug or 'Revoke USB debugging authorizations', then retry")
    if state == "offline":
        return DeviceError(f"device {serial} is offline: reconnect the cable (or `adb reconnect`), "
                           "then check `adb devices`")
    return DeviceError(f"device {serial} is in state {state!r}, not 'device'; check `adb devices`")


def _wait_device(client: adbutils.AdbClient, server: AdbServer, serial: str, addr: str | None, timeout: float,
                 adb_keys: str | None = None) -> None:
    """Wait for ``serial`` to reach state ``device``; TCP devices are re-``connect``ed when they stay offline.
    ``authorizing`` (keys being tried) is waited out; ``unauthorized`` is final: only the user can fix it."""
    deadline = time.monotonic() + timeout
    last_connect = time.monotonic()
    state = "absent"
    while time.monotonic() < deadline:
        states = {d.serial: d.state for d in _list(client)}
        state = states.get(serial, "absent")
        if state == "device":
            return
        if state == "unauthorized":
            raise _state_error(serial, state, adb_keys)
        if addr and state != "authorizing" and time.monotonic() - last_connect > RECONNECT_AFTER_S:
            if state == "offline":
                _run(server, ["disconnect", addr], timeout=10)
            _adb_connect(addr, server, adb_keys)
            last_connect = time.monotonic()
        time.sleep(0.1)
    if state == "absent":
        raise DeviceError(f"device {serial} did not appear within {timeout:.0f}s; check `adb devices`")
    raise _state_error(serial, state, adb_keys)


def get_device(kind: str, *, serial: str | None = None, adb_host: str | None = None, adb_port: int | None = None,
               connect_addr: str | None = None, virtual_root: Path | None = None, virtual_port: int | None = None,
               virtual_options: dict[str, Any] | None = None) -> adbutils.AdbDevice:
    """An adbutils device in state ``device``.

    kind="virtual": start the virtual device for ``virtual_root`` if needed, ``adb connect`` it (again after an
    ``adb kill-server``) and wait for it.  kind="adb": ``adb connect connect_addr`` first if given, then ``serial``
    or the only attached device.  ``adb_host``/``adb_port`` None: the server the environment names (adb's rules,
    see pipeline.device.adb).
    """
    try:
        server = resolve_server(adb_host, adb_port)
    except AdbToolError as e:
        raise DeviceError(str(e)) from None
    adb_keys = None
    if kind not in ("virtual", "adb"):
        raise DeviceError(f"device.kind={kind!r} is not supported; use 'virtual' or 'adb'")
    if kind == "virtual":
        from pipeline.virtual import VirtualDeviceError, default_port, ensure_running, status

        if not _is_loopback(server.host):
            raise DeviceError(f"device.kind=virtual needs a local adb server, not {server} ({server.source}); set "
                              "device.adb_host=127.0.0.1")
        root = Path(virtual_root or DEFAULT_VIRTUAL_ROOT).expanduser()
        try:
            vport = default_port(root) if virtual_port is None else virtual_port  # one per root: no collisions
            serial = ensure_running(root, vport, **(virtual_options or {}))
        except VirtualDeviceError as e:
            raise DeviceError(str(e)) from None
        adb_keys = (status(root) or {}).get("adb_keys")
        connect_addr = serial
    _ensure_server(server)
    client = adb_client(server.host, server.port)
    if connect_addr:
        _adb_connect(connect_addr, server, adb_keys)
        serial = serial or connect_addr
    if serial:
        _wait_device(client, server, serial, connect_addr, WAIT_DEVICE_S if connect_addr else 3.0, adb_keys)
        return client.device(serial=serial)
    infos = _list(client)
    if not infos:
        raise DeviceError("no device attached: plug in a phone with USB debugging enabled (check `adb devices`), "
                          "or use device=virtual")
    if len(infos) > 1:
        listing = ", ".join(f"{d.serial} ({d.state})" for d in infos)
        raise DeviceError(f"several devices attached: {listing}; set device.serial=<one of them>")
    if infos[0].state != "device":
        raise _state_error(infos[0].serial, infos[0].state)
    return client.device(serial=infos[0].serial)


_PROP_LINE = re.compile(r"^\[([^\]]+)\]: \[(.*)\]$")


def device_props(dev: adbutils.AdbDevice) -> dict[str, str | None]:
    """The provenance props (PROP_KEYS) from one ``getprop``; missing ones are None."""
    text = dev.shell("getprop", timeout=30)
    props: dict[str, str] = {}
    for line in str(text).splitlines():
        m = _PROP_LINE.match(line.strip())
        if m:
            props[m.group(1)] = m.group(2)
    return {k: (props.get(k) or None) for k in PROP_KEYS}  # as reported; pipeline.socs reads the SoC from them


def device_kind(dev: adbutils.AdbDevice) -> str:
    """"virtual" only if the device itself says so (``ro.odeval.virtual=1``) — provenance comes from the device."""
    value = str(dev.shell(["getprop", "ro.odeval.virtual"], timeout=30)).strip()
    return "virtual" if value == "1" else "real"


def device_record(dev: adbutils.AdbDevice) -> dict[str, Any]:
    """What push.json says about the device: its kind (virtual only if it says so), serial, provenance props and
    the adb version that talked to it."""
    from pipeline.device.remote import device_io

    with device_io(dev, "reading device properties"):
        return {"kind": device_kind(dev), "serial": dev.serial, "props": device_props(dev),
                "adb_version": adb_version()}
