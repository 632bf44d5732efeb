"""Lease logic on three real virtual devices with real processes: exclusivity, waiting, kill -9, offline, labels."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.config import PoolDevice
from pipeline.device.pool import PoolError, lease, select
from pipeline.locks import overlaps, read_leases
from tests.pool.conftest import REPO, Pool, start_worker

pytestmark = pytest.mark.timeout(180)


def _wait_leased(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.startswith("LEASED "), f"worker did not lease: {line!r} {proc.stderr.read() if proc.stderr else ''}"
    return line.split()[1]


def test_six_jobs_on_three_devices_never_share_a_device(fresh_log: Pool):
    """Six job processes race for three devices: each gets one, nobody shares, the extra three wait their turn."""
    pool = fresh_log
    procs = [start_worker(pool, pool.devices, f"job{i}", hold_s=1.0) for i in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.startswith("LEASED v")
    leases = read_leases(pool.lock_dir)
    assert sorted(r["job"] for r in leases) == [f"job{i}" for i in range(6)]
    assert all(r["t_release"] is not None for r in leases)
    assert overlaps(leases) == []
    assert {r["device"] for r in leases} <= {"v1", "v2", "v3"}
    # at most three leases are ever open at once (one per device)
    events = sorted([(r["t_acquire"], 1) for r in leases] + [(r["t_release"], -1) for r in leases])
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    assert peak <= 3


def test_a_killed_job_releases_its_lease(fresh_log: Pool):
    """SIGKILL gives no chance to clean up: the kernel drops the flock; the next holder logs the abandoned lease."""
    pool = fresh_log
    only_v1 = pool.devices[:1]
    holder = start_worker(pool, only_v1, "doomed", hold_s=300)
    try:
        assert _wait_leased(holder) == "v1"
        with pytest.raises(PoolError, match=r"busy: v1 \(job doomed, pid \d+"), \
                lease(only_v1, {}, pool.lock_dir, 0.3, "impatient", root=pool.root, poll_s=0.1):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        with lease(only_v1, {}, pool.lock_dir, 10, "next", root=pool.root, poll_s=0.1) as dev:
            assert dev.name == "v1"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    by_job = {r["job"]: r for r in read_leases(pool.lock_dir)}
    assert by_job["doomed"]["t_release"] is None and by_job["next"]["t_release"] is not None
    abandoned = [r for r in pool.log_lines() if r["event"] == "abandoned"]
    assert [(r["job"], r["pid"]) for r in abandoned] == [("doomed", holder.pid)]


def test_exceptions_and_ctrl_c_release_the_lease(fresh_log: Pool):
    pool = fresh_log
    only_v2 = pool.devices[1:2]
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), lease(only_v2, {}, pool.lock_dir, 5, "fails", root=pool.root):
            raise exc
    with lease(only_v2, {}, pool.lock_dir, 0.1, "after", root=pool.root) as dev:
        assert dev.name == "v2"
    assert all(r["t_release"] is not None for r in read_leases(pool.lock_dir))


def test_offline_and_absent_devices_are_skipped_with_a_warning(fresh_log: Pool, make_virtual_device, caplog):
    pool = fresh_log
    gone = make_virtual_device()  # connected, then its daemon dies: the adb server shows it offline / drops it
    from pipeline.virtual import stop

    stop(gone.root)
    offline = PoolDevice(name="dead", kind="adb", serial=gone.serial, adb_port=pool.adb_port)
    absent = PoolDevice(name="ghost", kind="adb", serial="emulator-5598", adb_port=pool.adb_port)
    with caplog.at_level(logging.WARNING, logger="pipeline.device.pool"), \
            lease([offline, absent, pool.devices[2]], {}, pool.lock_dir, 5, "job", root=pool.root) as dev:
        assert dev.name == "v3"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipping dead" in m and gone.serial in m for m in warned), warned
    assert any("skipping ghost" in m and "emulator-5598" in m for m in warned), warned
    # nothing online at all: fail at once with every reason, instead of waiting out the lease timeout
    with pytest.raises(PoolError, match=r"no device of the pool is online.*dead: .*ghost: "), \
            lease([offline, absent], {}, pool.lock_dir, 3600, "job2", root=pool.root):
        pass


def test_a_label_no_device_has_fails_fast_naming_the_label(pool: Pool, tmp_path: Path):
    with pytest.raises(PoolError) as e:
        select(pool.devices, {"chip": "8gen2"})
    msg = str(e.value)
    assert "chip=8gen2" in msg and "v1{chip=virtual,slot=1}" in msg and "v3{chip=virtual,slot=3}" in msg
    assert [d.name for d in select(pool.devices, {"slot": 2})] == ["v2"]  # labels compare as strings
    lock_dir = tmp_path / "locks"
    with pytest.raises(PoolError, match="chip=8gen2"), lease(pool.devices, {"chip": "8gen2"}, lock_dir, 3600, "j"):
        pass
    assert not lock_dir.exists()  # failed before touching any lock


def test_pool_config_errors_are_one_clear_line(pool: Pool):
    dup = [pool.devices[0], replace(pool.devices[1], name="v1")]
    with pytest.raises(PoolError, match=r"names \['v1'\] appear more than once"):
        select(dup, {})
    with pytest.raises(PoolError, match=r"device.pool\[p\]: kind=adb needs serial"):
        select([PoolDevice(name="p", kind="adb")], {})
    with pytest.raises(PoolError, match="kind virtual"):
        select([PoolDevice(name="p", kind="adb", serial="x")], {}, kinds=("virtual",))


def test_the_app_fails_fast_on_a_missing_label_before_fetching(fresh_log: Pool, tmp_path: Path):
    """End to end through `python -m pipeline`: no download, no lease, one line naming the label."""
    pool = fresh_log
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *pool.overrides(), "+device.require.chip=8gen2", "tracking=none",
         f"paths.cache={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'job'}"],
        cwd=REPO, env=pool.env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no pool device has chip=8gen2" in proc.stderr and "v2{chip=virtual,slot=2}" in proc.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "job" / "artifacts").exists()
    assert pool.log_lines() == []
