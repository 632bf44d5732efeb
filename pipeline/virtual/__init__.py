"""The virtual Android device: a loopback ADB daemon that the real ``adb`` server and adbutils drive like a phone.

This module manages the daemon *process* (so stages can start it on demand and tests can run several).  Layout of
``--root DIR`` (:mod:`pipeline.virtual.layout`): ``DIR/storage`` is the device's ``/``; ``DIR/state`` (0700, never
reachable over adb) holds ``adbd.json`` (pid file), ``adbd.log``, ``adbd.lock`` and ``faults.json`` (control file).
The protocol lives in :mod:`pipeline.virtual.adbd`, the shell in :mod:`pipeline.virtual.shell`, the app launch
(and its environment allowlist) in :mod:`pipeline.virtual.app_launch`.  Importing this package is cheap.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.codehash import virtual_device_code
from pipeline.context import forwarded_env
from pipeline.virtual.faults import make_faults, split_options, write_faults
from pipeline.virtual.layout import state_dir, storage_dir

__all__ = ["VirtualDeviceError", "ensure_running", "status", "stop", "serial_for", "adb_keys_path"]

PID_FILE = "adbd.json"
LOG_FILE = "adbd.log"
ADB_KEYS_FILE = "adb_keys"  # the authorized host keys when auth is on (a phone's /data/misc/adb/adb_keys)
DAEMON_OPTIONS = ("auth", "adb_keys", "sandbox")  # fixed for the daemon's lifetime (not faults): a change restarts it
START_TIMEOUT_S = 15.0


class VirtualDeviceError(Exception):
    """The virtual device daemon could not be started/stopped; the message says what to do."""


def default_port(root: Path) -> int:
    """A port derived from the device's storage root (15000–16999): each checkout's virtual device gets its own,
    so two clones (or a clone and CI) never fight over one port; the same root always gets the same port."""
    import zlib

    return 15000 + zlib.crc32(str(Path(root).expanduser().resolve()).encode()) % 2000


def serial_for(port: int, host: str = "127.0.0.1") -> str:
    return f"{host}:{port}"


def adb_keys_path(root: Path) -> Path:
    """Default authorized-keys file of the device for ``root``: host side, in the daemon's state dir."""
    return state_dir(root) / ADB_KEYS_FILE


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


def _daemon_options(root: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Pop auth/adb_keys/sandbox out of ``options`` → {"auth", "adb_keys" (the path only with auth), "sandbox"}."""
    auth = _flag(options.pop("auth", False))
    keys = options.pop("adb_keys", None)
    sandbox = options.pop("sandbox", "on")
    if str(sandbox).strip().lower() not in ("on", "off", "true", "false", "1", "0"):
        raise VirtualDeviceError(f"device.virtual.sandbox={sandbox!r}: use on (default) or off")
    out = {"auth": auth, "adb_keys": None, "sandbox": _flag(sandbox)}
    if auth:
        out["adb_keys"] = str(Path(keys).expanduser().resolve() if keys else adb_keys_path(root))
    return out


def _fixed_at_start(info: dict[str, Any]) -> tuple[Any, ...]:
    """What a running daemon was started with that only a restart can change."""
    return bool(info.get("auth")), info.get("adb_keys"), info.get("sandbox", True)


def _alive(pid: int) -> bool:
    """True if ``pid`` is a live daemon of ours (not a recycled pid of something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    return b"pipeline.virtual" in cmdline and b"serve" in cmdline


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


LEGACY_PID_FILE = Path(".odeval") / PID_FILE  # before storage/ + state/: inside the device storage (stop only)


def status(root: Path, path: Path | None = None) -> dict | None:
    """The running daemon for ``root`` (pid, port, serial, root, options, log) or None if none runs."""
    path = path or state_dir(root) / PID_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not _alive(int(info.get("pid", -1))):
        return None
    info["running"] = True
    return info


def _options_cli(options: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in sorted(options.items()):
        if value is None:
            continue
        if isinstance(value, list):
            value = json.dumps(value)
        args += ["--fault", f"{key}={value}"]
    return args


def ensure_running(root: Path, port: int, **options: Any) -> str:
    """Start the daemon for ``root`` on ``port`` unless it already runs; return its serial ``127.0.0.1:<port>``.

    Idempotent.  If a daemon already serves this root with other options, the options are applied through the
    faults control file (no restart, so the adb server keeps its connection).  ``app_cmd`` (test hook) is a start
    option: a running daemon with another one is an error, never changed in place.
    """
    from filelock import FileLock

    given = dict(options)
    given_app_cmd = "app_cmd" in options
    options, app_cmd = split_options(options)
    daemon_opts = _daemon_options(root, options)
    make_faults(options, "virtual device options")  # fail fast on a bad option
    state = state_dir(root, create=True)
    with FileLock(str(state / "adbd.lock"), timeout=60):
        info = status(root)
        wanted = (daemon_opts["auth"], daemon_opts["adb_keys"], daemon_opts["sandbox"])
        asked = any(k in given for k in DAEMON_OPTIONS)  # not given: keep whatever runs (like other options)
        if info is not None and asked and _fixed_at_start(info) != wanted:
            _refuse_if_held(port)
            stop(root)  # fixed for a daemon's life (auth, sandbox): restart it, as a phone reboots
            info = None
        if info is not None and info.get("code") != virtual_device_code():
            _refuse_if_held(port)
            print(f"virtual device {serial_for(port)}: restarting it — its code changed since it started",
                  file=sys.stderr)
            stop(root)  # a daemon runs the code it imported: an edited shell or sync service must not go unseen
            info = None
        if info is not None:
            if int(info["port"]) != int(port):
                raise VirtualDeviceError(
                    f"virtual device for {root} already runs on port {info['port']}, not {port}; "
                    f"use port {info['port']} or run `python -m pipeline.virtual stop --root {root}`")
            if given_app_cmd and info.get("app_cmd") != app_cmd:
                raise VirtualDeviceError(
                    f"virtual device for {root} already runs with app_cmd={info.get('app_cmd')!r}, not {app_cmd!r}; "
                    f"the app command is fixed at start: `python -m pipeline.virtual stop --root {root}` first")
            if options and info.get("options") != options:
                _refuse_if_held(port)
                write_faults(root, **options)
                info["options"] = options
                (state / PID_FILE).write_text(json.dumps(info))
            return info["serial"]
        return _spawn(Path(root).resolve(), port, options, app_cmd, daemon_opts)


def _refuse_if_held(port: int) -> None:
    """Options that restart the daemon or change its faults never touch a device another run holds (its lease,
    pipeline/device/pool.py): one line names the holder."""
    from pipeline.locks import virtual_holder_elsewhere

    holder = virtual_holder_elsewhere(port)
    if holder is not None:
        raise VirtualDeviceError(f"virtual device 127.0.0.1:{port} is held by {holder.get('job')} (pid "
                                 f"{holder.get('pid')} on {holder.get('host')}): its options (faults, auth) cannot "
                                 "change under that run — wait for it to end")


def _spawn(root: Path, port: int, options: dict[str, Any], app_cmd: list[str] | None = None,
           daemon_opts: dict[str, Any] | None = None) -> str:
    state = state_dir(root, create=True)
    log_path = state / LOG_FILE
    pid_path = state / PID_FILE
    pid_path.unlink(missing_ok=True)
    # The daemon outlives the process that starts it. Started from a `dvc exp run --queue` temp copy of the repo,
    # that copy is deleted after the experiment: run the daemon (and the apps it launches) from the real repo.
    from pipeline.workspace import outside_dvc_temp

    repo = outside_dvc_temp(Path(__file__).resolve().parents[2])
    env = forwarded_env()  # an allowlist (pipeline/context.py FORWARDED): never HF_TOKEN & co.
    env |= {"PYTHONPATH": str(repo), "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pipeline.virtual", "serve", "--root", str(root), "--port", str(port),
           *_options_cli(options), *(["--app-cmd", json.dumps(app_cmd)] if app_cmd else [])]
    daemon_opts = daemon_opts or {}
    if daemon_opts.get("auth"):
        cmd += ["--auth", "--adb-keys", str(daemon_opts["adb_keys"])]
    if daemon_opts.get("sandbox", True) is False:
        cmd += ["--sandbox", "off"]
        print(SANDBOX_OFF_WARNING, file=sys.stderr)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=str(state))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
            hint = ""
            if "in use" in tail[0]:  # most often another checkout's virtual device (they persist, like a phone)
                hint = (f" Port {port} is taken, often by another checkout's virtual device: stop that one"
                        " (`python -m pipeline.virtual stop --root <its device root>`) or use another port"
                        f" (`-S device.virtual.port={port + 1}` / `device.virtual.port={port + 1}`; null derives"
                        " one from the root).")
            raise VirtualDeviceError(f"virtual device did not start (exit {proc.returncode}): {tail[0]} "
                                     f"— see {log_path}.{hint}")
        if pid_path.exists() and _listening("127.0.0.1", port):
            return serial_for(port)
        time.sleep(0.05)
    proc.kill()
    raise VirtualDeviceError(f"virtual device did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S:.0f}s; "
                             f"see {log_path}")


SANDBOX_OFF_WARNING = (
    "WARNING: virtual device sandbox OFF (device.virtual.sandbox=off): anything that can reach its adb port — any "
    "local user — runs code with your user's rights and reads your files. Results record ro.odeval.sandbox=off.")


def write_pid_file(root: Path, port: int, host: str, options: dict[str, Any],
                   app_cmd: list[str] | None = None, *, auth: bool = False, adb_keys: str | None = None,
                   sandbox: str = "off") -> Path:
    """Called by the serving process once it listens (so 'pid file exists' means 'ready')."""
    state = state_dir(root, create=True)
    path = state / PID_FILE
    info = {"pid": os.getpid(), "port": port, "host": host, "serial": serial_for(port, host),
            "root": str(Path(root).resolve()), "storage": str(storage_dir(root)), "state": str(state),
            "options": options, "app_cmd": app_cmd, "log": str(state / LOG_FILE), "started": time.time(),
            "auth": auth, "adb_keys": adb_keys, "sandbox": sandbox != "off", "confinement": sandbox,
            "code": virtual_device_code()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)
    return path


def stop(root: Path, timeout: float = 10.0) -> bool:
    """Stop the daemon serving ``root`` (only that one; also one of the old layout).  True if one was running."""
    info = status(root)
    path = state_dir(root) / PID_FILE
    if info is None and (Path(root).resolve() / LEGACY_PID_FILE).is_file():
        path = Path(root).resolve() / LEGACY_PID_FILE
        info = status(root, path)
    if info is None:
        path.unlink(missing_ok=True)
        return False
    pid = int(info["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid) and not _zombie(pid):
        time.sleep(0.05)
    if _alive(pid) and not _zombie(pid):
        os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True


def _zombie(pid: int) -> bool:
    try:
        return ") Z " in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
