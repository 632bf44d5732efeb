"""Daemon-wide process table: virtual pids for shell sessions and the apps they start (a second ``adb shell`` can
``kill`` or ``cat /proc/<pid>/status`` what the first one started).  Independent of the shell and the protocol."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.virtual.shell_api import Session


@dataclass
class VProc:
    vpid: int
    name: str
    ppid: int
    session: Session | None = None
    popen: subprocess.Popen | None = None
    started: float = field(default_factory=time.time)
    argv: list[str] = field(default_factory=list)  # device argv, what /proc/<pid>/cmdline shows (never host paths)


class ProcessTable:
    """Virtual pids for shell sessions and the apps they start; maps them to host processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 1000
        self._procs: dict[int, VProc] = {}

    def add(self, name: str, ppid: int, session: Session | None = None, vpid: int | None = None) -> VProc:
        with self._lock:
            if vpid is None:
                self._next += 1
                vpid = self._next
            proc = VProc(vpid, name, ppid, session)
            self._procs[vpid] = proc
            return proc

    def remove(self, vpid: int, proc: VProc | None = None) -> None:
        with self._lock:
            if proc is None or self._procs.get(vpid) is proc:
                self._procs.pop(vpid, None)

    def get(self, vpid: int) -> VProc | None:
        with self._lock:
            return self._procs.get(vpid)

    def all(self) -> list[VProc]:
        with self._lock:
            return sorted(self._procs.values(), key=lambda p: p.vpid)

    def kill_all(self) -> None:
        for p in self.all():
            if p.popen is not None:
                kill_group(p.popen, signal.SIGKILL)
            if p.session is not None:
                p.session.abort()


def host_status(popen: subprocess.Popen) -> bytes | None:
    """``/proc/<pid>/status`` of a child the daemon started (run by the host broker: the device domain cannot read
    /proc); None once it has exited."""
    if popen.poll() is not None:
        return None
    try:
        return Path(f"/proc/{popen.pid}/status").read_bytes()
    except OSError:
        return None


def kill_group(popen: subprocess.Popen, sig: int) -> None:
    """Signal the whole process group of a child we started (it is its own group leader)."""
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

