"""Wires the ADB protocol to the services it serves: the one place that knows both :mod:`pipeline.virtual.adbd`
and :mod:`pipeline.virtual.shell` (so neither imports the other: adbd takes the shell service by injection)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.virtual.adbd import Daemon
from pipeline.virtual.shell import serve_shell_stream


def make_daemon(root: Path, port: int, host: str = "127.0.0.1", options: dict[str, Any] | None = None, *,
                app_cmd: list[str] | None = None, auth: bool = False, adb_keys: Path | None = None,
                sandbox: bool = True) -> Daemon:
    """A daemon serving sync (built into adbd) and shell/exec (the virtual shell)."""
    return Daemon(root, port, host, options, app_cmd=app_cmd, shell_service=serve_shell_stream, auth=auth,
                  adb_keys=adb_keys, sandbox=sandbox)
