"""The virtual device's storage: its ``/`` (:class:`~pipeline.rootfs.DeviceRoot`, resolved in-root by the
kernel), its capacity (:class:`~pipeline.virtual.space.SpaceLedger`) and the simulated ``/sys`` telemetry files.

Every device path the shell or the sync service touches goes through :attr:`Sandbox.fs`; every byte written goes
through :meth:`Sandbox.create` (charged to the capacity).  Nothing here hands out a host path: a host path would be
resolved a second time by whoever opens it, and that second walk is what a device-side symlink race exploits.
The storage persists across daemon restarts, like a phone's.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.rootfs import DeviceRoot, normalize
from pipeline.virtual.faults import Faults
from pipeline.virtual.space import NoSpace, SpaceLedger, Writer

DEFAULT_DIRS = ("data/local/tmp", "sdcard", "system/bin", "proc", "sys")
THERMAL_FILES = {
    "sys/class/thermal/thermal_zone0/type": None,
    "sys/class/thermal/thermal_zone0/temp": None,
    "sys/class/power_supply/battery/current_now": None,
    "sys/class/power_supply/battery/voltage_now": None,
    "sys/class/power_supply/battery/temp": None,
}
_WRITE_FLAGS = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}


class DeviceFile:
    """A device file open for writing: each chunk is charged to the device's capacity before it is written."""

    def __init__(self, fd: int, writer: Writer) -> None:
        self.fd = fd
        self.writer = writer
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        self.writer.charge(len(view))
        done = 0
        while done < len(view):
            done += os.write(self.fd, view[done:])
        return done

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                os.close(self.fd)
            finally:
                self.writer.close()

    def __enter__(self) -> DeviceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sandbox:
    """The device's storage: in-root file operations, capacity-charged writes, simulated ``/sys``."""

    def __init__(self, root: Path, faults: Callable[[], Faults] = Faults) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.fs = DeviceRoot(self.root)
        for d in DEFAULT_DIRS:  # in-root: a link the device left at /data must not make the host mkdir elsewhere
            try:
                self.fs.mkdir("/" + d, parents=True)
            except OSError:
                pass  # the device replaced it with a file: its own business, as on a phone
        self._faults = faults
        self.space = SpaceLedger(self.fs.walk_sizes, lambda: self._faults().capacity_bytes,
                                 lambda: self._faults().disk_full, host_fd=self.fs.fd)
        self._t0 = time.monotonic()

    @staticmethod
    def normalize(path: str, cwd: str = "/") -> str:
        """Absolute, normalised device path (``/a/../..`` → ``/``)."""
        return normalize(path, cwd)

    def disk_full(self) -> bool:
        return self._faults().disk_full

    def create(self, path: str, mode: str = "w", cwd: str = "/", perm: int = 0o666) -> DeviceFile:
        """Open a device file for writing (``w`` truncate, ``a`` append, ``x`` exclusive), capacity-charged."""
        if self._faults().disk_full:
            raise NoSpace
        existed = mode == "w" and self.fs.exists(path, cwd)
        fd = self.fs.open(path, _WRITE_FLAGS[mode], perm, cwd=cwd)
        if existed:
            self.space.freed()  # O_TRUNC dropped the old bytes
        return DeviceFile(fd, self.space.writer())

    def used_bytes(self) -> int:
        """Bytes of regular files on the device (what ``df`` reports as used), freshly walked."""
        return self.space.used(fresh=True)

    # -- simulated telemetry -------------------------------------------------------------------------------------
    def refresh_sys(self, faults: Faults) -> None:
        """Create (with fresh values) or remove the simulated /sys telemetry files, as the faults say."""
        if not faults.simulate_thermal:
            for rel in THERMAL_FILES:
                try:
                    self.fs.remove("/" + rel)
                except OSError:
                    pass
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
            dev = "/" + rel
            try:
                self.fs.mkdir(os.path.dirname(dev), parents=True)
                tmp = dev + ".tmp"
                fd = self.fs.open(tmp, _WRITE_FLAGS["w"], 0o644)
                try:
                    os.write(fd, (value + "\n").encode())
                finally:
                    os.close(fd)
                self.fs.rename(tmp, dev)
            except OSError:
                continue  # the device side replaced a dir here: its own business, like on a phone
