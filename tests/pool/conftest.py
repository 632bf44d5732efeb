"""Fixtures for pool tests: three virtual devices (separate roots and ports) on the session's one adb server.

The devices are started on demand by the pool itself (as in production); teardown stops only the daemons whose
roots we created and disconnects them from our adb server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from pipeline.config import PoolDevice
from pipeline.device.adb import run_adb
from pipeline.device.pool import serial_of
from pipeline.locks import LEASE_LOG, lock_dir_for
from pipeline.virtual import stop
from pipeline.virtual.faults import write_faults
from tests.helpers.device import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Pool:
    """A shared root (locks, lease log, virtual roots) and its three virtual pool devices."""

    root: Path
    devices: list[PoolDevice]
    adb_port: int

    @property
    def lock_dir(self) -> Path:
        return lock_dir_for(self.root)

    def overrides(self) -> list[str]:
        """Hydra overrides that point conf/device/pool-virtual.yaml at these roots/ports."""
        out = ["device=pool-virtual"]
        for i, d in enumerate(self.devices):
            out += [f"device.pool.{i}.virtual_root={d.virtual_root}", f"device.pool.{i}.virtual_port={d.virtual_port}"]
        return out

    def env(self) -> dict[str, str]:
        """Environment for job subprocesses: this root as the shared root, the repo importable, 1 torch thread."""
        return {**os.environ, "ODEVAL_ROOT": str(self.root), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                "ODEVAL_QUIET": "1", "ANDROID_ADB_SERVER_PORT": str(self.adb_port)}

    def log_lines(self) -> list[dict]:
        path = self.lock_dir / LEASE_LOG
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def pool(adb_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    root = tmp_path_factory.mktemp("pool-root")
    devices = [PoolDevice(name=f"v{i}", kind="virtual", virtual_root=str(root / f"dev-v{i}"),
                          virtual_port=free_port(), labels={"chip": "virtual", "slot": str(i)}) for i in (1, 2, 3)]
    try:
        yield Pool(root=root, devices=devices, adb_port=adb_server.port)
    finally:
        for d in devices:
            run_adb(["disconnect", serial_of(d)], port=adb_server.port, timeout=10)
            stop(Path(d.virtual_root or ""))


@pytest.fixture
def fresh_log(pool: Pool) -> Pool:
    """The pool with an empty lease log (each test reads only its own leases) and no leftover faults."""
    (pool.lock_dir / LEASE_LOG).unlink(missing_ok=True)
    for d in pool.devices:
        if Path(d.virtual_root or "", "state").exists():  # pipeline/virtual/layout.py: the host-side state dir
            write_faults(Path(d.virtual_root or ""))
    return pool


def start_worker(pool: Pool, devices: list[PoolDevice], job: str, hold_s: float, timeout_s: float = 60,
                 require: dict | None = None) -> subprocess.Popen:
    """A separate process that leases a device, prints `LEASED <name>`, holds it for hold_s, and exits."""
    spec = json.dumps({"pool": [asdict(d) for d in devices], "require": require or {}, "lock_dir": str(pool.lock_dir),
                       "timeout_s": timeout_s, "job": job, "hold_s": hold_s, "root": str(pool.root)})
    return subprocess.Popen([sys.executable, "-m", "tests.pool.lease_worker", spec], cwd=REPO, env=pool.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
