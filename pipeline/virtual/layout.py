"""Where a virtual device keeps its things on the host: ``<root>/storage`` is the device's ``/``, ``<root>/state``
(mode 0700) holds the daemon's pid file, log, lock and the faults control file.

WHY two sibling dirs: anything under ``storage`` is addressable over adb (push, shell, pull).  Control and state
files must not be, or a pushed file could steer the daemon (e.g. a control file naming a host program), and
reading the pid file would show host paths.  ``state`` is never mapped to a device path.
"""

from __future__ import annotations

import os
from pathlib import Path

STORAGE_DIR = "storage"
STATE_DIR = "state"


def storage_dir(root: Path) -> Path:
    """Host dir that is the device's ``/``."""
    return Path(root).expanduser().resolve() / STORAGE_DIR


def state_dir(root: Path, create: bool = False) -> Path:
    """Host-only dir for pid file, log, lock and control file; created 0700 (and tightened if it exists)."""
    path = Path(root).expanduser().resolve() / STATE_DIR
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (path.stat().st_mode & 0o777) != 0o700:
            os.chmod(path, 0o700)
    return path
