"""CLI: ``python -m pipeline.virtual start|stop|status|serve [--port N] [--root DIR] [--host H] [--fault k=v]
[--app-cmd JSON]``.

``start`` daemonises (idempotent) and prints the serial; ``serve`` runs in the foreground (what ``start`` spawns).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from pipeline.virtual import (
    SANDBOX_OFF_WARNING,
    VirtualDeviceError,
    adb_keys_path,
    default_port,
    ensure_running,
    status,
    stop,
    write_pid_file,
)
from pipeline.virtual.adbd import AdbdError, check_loopback
from pipeline.virtual.faults import FaultsError, parse_app_cmd, parse_cli
from pipeline.virtual.services import make_daemon

DEFAULT_ROOT = Path(os.environ.get("ODEVAL_VIRTUAL_ROOT", "~/.cache/odeval/virtual-device")).expanduser()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.virtual", description="odeval virtual Android device")
    p.add_argument("command", choices=["start", "stop", "status", "serve"])
    p.add_argument("--port", type=int, default=None,
                   help="TCP port on 127.0.0.1 (default: derived from --root, as the pipeline stages do)")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                   help=f"device dir: DIR/storage is the device's /, DIR/state the daemon's (default {DEFAULT_ROOT})")
    p.add_argument("--host", default="127.0.0.1", help="bind address; only loopback is accepted")
    p.add_argument("--fault", action="append", default=[], metavar="KEY=VALUE",
                   help="option/fault, e.g. disk_full=1, drop_push_after_bytes=1000000, simulate_thermal=1")
    p.add_argument("--auth", action="store_true",
                   help="require ADB AUTH like a real phone: only hosts whose key is in --adb-keys are authorized")
    p.add_argument("--adb-keys", type=Path, default=None,
                   help="authorized host keys (adb_keys format; default: adb_keys in the daemon's state dir)")
    p.add_argument("--sandbox", choices=["on", "off"], default="on",
                   help="on (default): the kernel confines the device side (Landlock + in-root path resolution); "
                        "refuses to start when it cannot. off: no confinement — any local user with adb runs code "
                        "as you (recorded in provenance as ro.odeval.sandbox=off)")
    p.add_argument("--app-cmd", default=None, metavar="JSON",
                   help="test hook: host argv prefix run instead of the reference app (JSON list); fixed for the "
                        "daemon's lifetime, nothing on the device can change it")
    return p


def _serve(root: Path, port: int, host: str, options: dict, app_cmd: list[str] | None, auth: bool = False,
           adb_keys: Path | None = None, sandbox: bool = True) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if auth and adb_keys is None:
        adb_keys = adb_keys_path(root)
    daemon = make_daemon(root, port, host, options, app_cmd=app_cmd, auth=auth, adb_keys=adb_keys, sandbox=sandbox)
    daemon.bind()
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    write_pid_file(root, daemon.port, daemon.host, options, app_cmd, auth=auth,
                   adb_keys=str(daemon.adb_keys) if auth else None, sandbox=daemon.confinement)
    logger = logging.getLogger("odeval.virtual")
    logger.info("serving %s:%d root=%s storage=%s options=%s app_cmd=%s auth=%s sandbox=%s", daemon.host,
                daemon.port, daemon.root, daemon.sandbox.root, options, app_cmd, auth, daemon.confinement)
    if daemon.confinement == "off":
        logger.warning(SANDBOX_OFF_WARNING)
    daemon.serve_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root = args.root.expanduser().resolve()
    port = default_port(root) if args.port is None else args.port
    try:
        check_loopback(args.host)
        options = parse_cli(args.fault)
        app_cmd = parse_app_cmd(args.app_cmd)
        if args.command == "serve":
            return _serve(root, port, args.host, options, app_cmd, args.auth, args.adb_keys, args.sandbox == "on")
        if args.command == "start":
            options["sandbox"] = args.sandbox
            if args.auth:
                options.update(auth=True, adb_keys=str(args.adb_keys) if args.adb_keys else None)
            print(ensure_running(root, port, **options, **({"app_cmd": app_cmd} if app_cmd else {})))
            return 0
        if args.command == "stop":
            print("stopped" if stop(root) else "not running")
            return 0
        info = status(root)
        print(json.dumps(info) if info else "not running")
        return 0 if info else 1
    except (AdbdError, FaultsError, VirtualDeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
