"""Who holds which device: one ``flock`` per device under ``<shared root>/.odeval/locks`` (the kernel drops it when
its process dies: a crash or ``kill -9`` never leaves a device held), a holder record beside it, and the audit log
of every lease (``leases.jsonl``).  Part of the core because two floors ask it: the device pool takes leases
(:mod:`pipeline.device.pool`) and the virtual device refuses to change options under a run that holds it
(:mod:`pipeline.virtual`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

LOCK_SUBDIR = Path(".odeval") / "locks"
LEASE_LOG = "leases.jsonl"


def lock_dir_for(root: Path) -> Path:
    """The lock dir every job of one host must share: ``<shared_root>/.odeval/locks``."""
    return Path(root) / LOCK_SUBDIR


def append_record(lock_dir: Path, record: dict[str, Any]) -> None:
    """One JSON line per event, written with a single O_APPEND write (whole lines even from parallel jobs)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(lock_dir / LEASE_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_leases(lock_dir: Path) -> list[dict[str, Any]]:
    """One dict per lease (acquire joined with its release); ``t_release`` is None for a lease never released
    (its process was killed — the OS released the lock, see the ``abandoned`` record)."""
    path = Path(lock_dir) / LEASE_LOG
    leases: dict[tuple[str, int, float], dict[str, Any]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        rec = json.loads(line)
        key = (rec["device"], rec["pid"], rec["t_acquire"])
        if rec["event"] == "acquire":
            leases[key] = {**rec, "t_release": None}
        elif rec["event"] == "release" and key in leases:
            leases[key]["t_release"] = rec["t_release"]
    for lease_ in leases.values():
        lease_.pop("event", None)
    return sorted(leases.values(), key=lambda r: r["t_acquire"])


def overlaps(leases: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of released leases of the same device whose [t_acquire, t_release] intervals intersect."""
    out = []
    done = [r for r in leases if r["t_release"] is not None]
    for i, a in enumerate(done):
        for b in done[i + 1:]:
            if a["device"] == b["device"] and a["t_acquire"] < b["t_release"] and b["t_acquire"] < a["t_release"]:
                out.append((a, b))
    return out


def holder(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def safe_key(address: str) -> str:
    """A lock-file name for a device address (``host_port_serial``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", address)


def virtual_key(port: int) -> str:
    """The lock key of the virtual device on ``port`` (any adb server reaches the same daemon)."""
    return safe_key(f"virtual_127.0.0.1:{int(port)}")


def virtual_holder_elsewhere(port: int, root: Path | None = None) -> dict[str, Any] | None:
    """Who holds the virtual device on ``port`` when it is another process (its holder record), else None.

    For tools that change a running daemon (its faults, auth): they must not act under another run."""
    from filelock import Timeout, UnixFileLock

    from pipeline.workspace import shared_root

    lock_dir = lock_dir_for(root or shared_root())
    key = virtual_key(port)
    if not (lock_dir / f"{key}.lock").exists():
        return None
    lock = UnixFileLock(str(lock_dir / f"{key}.lock"), timeout=0, thread_local=False, fallback_to_soft=False)
    try:
        lock.acquire()
    except Timeout:
        who = holder(lock_dir / f"{key}.holder.json") or {"job": "?", "pid": "?", "host": "?"}
        return None if who.get("pid") == os.getpid() else who
    lock.release()
    return None
