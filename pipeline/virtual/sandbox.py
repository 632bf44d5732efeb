"""Device filesystem of the virtual device: device paths map under a host root directory.

Every path the shell or the sync service touches goes through :meth:`Sandbox.host`, which normalises the device
path (``..`` cannot climb above ``/``) and then checks that the *real* host path (after following symlinks) is still
inside the root, so neither traversal nor a symlink pointing outside can reach the host.  The root persists across
daemon restarts, like a phone's storage.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import random
import time
from pathlib import Path

from pipeline.virtual.faults import Faults

log = logging.getLogger("odeval.virtual.security")
DEFAULT_DIRS = ("data/local/tmp", "sdcard", "system/bin", "proc", "sys")
THERMAL_FILES = {
    "sys/class/thermal/thermal_zone0/type": None,
    "sys/class/thermal/thermal_zone0/temp": None,
    "sys/class/power_supply/battery/current_now": None,
    "sys/class/power_supply/battery/voltage_now": None,
    "sys/class/power_supply/battery/temp": None,
}


class SandboxError(Exception):
    """A device path that is not reachable inside the sandbox; ``errno_name`` says which POSIX error to report."""

    def __init__(self, path: str, errno_name: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.errno_name = errno_name
        self.message = message


class Sandbox:
    """Maps device paths to host paths under ``root`` and refuses anything that would escape it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        for d in DEFAULT_DIRS:
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self._real_root = os.path.realpath(self.root)
        self._t0 = time.monotonic()

    @staticmethod
    def normalize(path: str, cwd: str = "/") -> str:
        """Absolute, normalised device path (``/a/../..`` → ``/``)."""
        joined = posixpath.join(cwd, path) if path else cwd
        norm = posixpath.normpath("/" + joined.lstrip("/"))
        return "/" if norm in ("", "//") else norm.replace("//", "/")

    def host(self, path: str, cwd: str = "/", *, follow: bool = True) -> Path:
        """Host path for a device path; raises :class:`SandboxError` (EACCES) if it would leave the root."""
        dev = self.normalize(path, cwd)
        host = os.path.join(self._real_root, dev.lstrip("/")) if dev != "/" else self._real_root
        # Check the real location: the parent always, the leaf too unless the caller wants the link itself.
        probe = host if follow else os.path.dirname(host)
        real = os.path.realpath(probe)
        if real != self._real_root and not real.startswith(self._real_root + os.sep):
            log.warning("refused: device path %r resolves outside the device storage (to %s)", dev, real)
            raise SandboxError(path, "EACCES", "Permission denied")
        return Path(host)

    def device(self, host: Path | str) -> str:
        """Device path of a host path inside the root."""
        rel = os.path.relpath(os.path.realpath(host), self._real_root)
        return "/" if rel == "." else "/" + rel.replace(os.sep, "/")

    def symlink_target(self, target: str, link_device_path: str) -> str:
        """Store absolute device targets as relative links so they stay inside the root on the host."""
        if not target.startswith("/"):
            return target
        return posixpath.relpath(self.normalize(target), posixpath.dirname(self.normalize(link_device_path)))

    # -- simulated telemetry -------------------------------------------------------------------------------------
    def refresh_sys(self, faults: Faults) -> None:
        """Create (with fresh values) or remove the simulated /sys telemetry files, as the faults say."""
        if not faults.simulate_thermal:
            for rel in THERMAL_FILES:
                p = self.root / rel
                if p.exists():
                    p.unlink()
            return
        t = time.monotonic() - self._t0
        wave = math.sin(t / 20.0)
        values = {
            "sys/class/thermal/thermal_zone0/type": "cpu-0-0-usr",
            "sys/class/thermal/thermal_zone0/temp": str(int(38000 + 6000 * wave + random.randint(-300, 300))),
            "sys/class/power_supply/battery/current_now": str(int(-420000 - 150000 * wave
                                                                  + random.randint(-20000, 20000))),
            "sys/class/power_supply/battery/voltage_now": str(int(4_050_000 - 200 * t + random.randint(-3000, 3000))),
            "sys/class/power_supply/battery/temp": str(int(305 + 30 * wave + random.randint(-3, 3))),
        }
        for rel, value in values.items():
            p = self.root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(value + "\n")
            os.replace(tmp, p)

    def used_bytes(self) -> int:
        """Bytes of regular files under the root (what df reports as used)."""
        total = 0
        for dirpath, _dirs, files in os.walk(self._real_root):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                total += st.st_size
        return total
