"""The one adb wrapper: always the same binary (the one in the adbutils wheel) and an explicit server port.

Why: an adb client whose version differs from the running server kills and restarts that server, dropping every
``adb connect``ed device; using one binary everywhere (and pointing adbutils' own auto-start at it) avoids that.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import adbutils

__all__ = ["AdbToolError", "adb_path", "adb_server_port", "run_adb", "adb_client", "adb_version"]


class AdbToolError(Exception):
    """The adb binary is missing, not executable, or an adb invocation timed out."""


def adb_path() -> str:
    """The adb binary shipped in the adbutils wheel (made executable if needed), else ``adb`` on PATH."""
    bundled = Path(adbutils.__file__).resolve().parent / "binaries" / ("adb.exe" if os.name == "nt" else "adb")
    if bundled.is_file():
        mode = bundled.stat().st_mode
        if not mode & stat.S_IXUSR:
            try:
                bundled.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            except OSError:
                pass
        if os.access(bundled, os.X_OK):
            return str(bundled)
    found = shutil.which("adb")
    if found:
        return found
    raise AdbToolError("no adb binary: reinstall adbutils (`pip install --force-reinstall adbutils`) "
                       "or put platform-tools' adb on PATH")


def adb_server_port() -> int:
    """The adb server port: ANDROID_ADB_SERVER_PORT, else 5037."""
    value = os.environ.get("ANDROID_ADB_SERVER_PORT", "5037")
    try:
        return int(value)
    except ValueError:
        raise AdbToolError(f"ANDROID_ADB_SERVER_PORT={value!r} is not a port number; unset it or fix it") from None


def run_adb(args: list[str], *, port: int | None = None, timeout: float = 30, input: bytes | None = None,
            host: str | None = None) -> subprocess.CompletedProcess:
    """Run ``adb [-H host] -P port <args>`` (argv list, never a shell string) and capture its output."""
    cmd = [adb_path()]
    if host and host not in ("127.0.0.1", "localhost"):
        cmd += ["-H", host]
    cmd += ["-P", str(port or adb_server_port()), *args]
    try:
        return subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, check=False,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AdbToolError(f"`adb {' '.join(args)}` did not finish within {timeout:g}s; is the device/server "
                           "responsive? try `adb kill-server`") from None
    except OSError as e:
        raise AdbToolError(f"cannot run {cmd[0]}: {e}") from None


def adb_client(host: str = "127.0.0.1", port: int | None = None) -> adbutils.AdbClient:
    """An adbutils client for the server at host:port; adbutils' auto-start will use our binary too."""
    os.environ.setdefault("ADBUTILS_ADB_PATH", adb_path())
    return adbutils.AdbClient(host=host, port=port or adb_server_port())


def adb_version() -> str:
    """``1.0.41 (36.0.0-13206524)``-style version of the adb binary we use (no server needed)."""
    proc = subprocess.run([adb_path(), "version"], capture_output=True, text=True, timeout=10, check=False)
    lines = proc.stdout.splitlines()
    proto = lines[0].rsplit(" ", 1)[-1] if lines else "unknown"
    tools = next((ln.split(" ", 1)[1] for ln in lines if ln.startswith("Version ")), "")
    return f"{proto} ({tools})" if tools else proto
