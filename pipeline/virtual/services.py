"""Wires the device to the services it serves: the one place that knows :mod:`pipeline.virtual.daemon`, the shell
(:mod:`pipeline.virtual.shell`) and the sync service (:mod:`pipeline.virtual.sync_service`), so none imports
another: the daemon takes its services by injection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.virtual.daemon import Daemon
from pipeline.virtual.shell import serve_shell_stream
from pipeline.virtual.sync_service import serve_sync_stream


def make_daemon(root: Path, port: int, host: str = "127.0.0.1", options: dict[str, Any] | None = None, *,
                app_cmd: list[str] | None = None, auth: bool = False, adb_keys: Path | None = None,
                sandbox: bool = True) -> Daemon:
    """A daemon serving sync (adb push/pull) and shell/exec (the virtual shell)."""
    return Daemon(root, port, host, options, app_cmd=app_cmd, shell_service=serve_shell_stream,
                  sync_service=serve_sync_stream, auth=auth, adb_keys=adb_keys, sandbox=sandbox)
