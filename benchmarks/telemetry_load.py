"""How much the telemetry sampler loads the phone it measures: device processes spawned per second.

    python benchmarks/telemetry_load.py [--seconds 10] [--interval 0.5] [--zones 80] [--cpus 8]

Two device layouts, each sampled by the current TelemetrySampler ("after") and by the previous design ("before":
``echo marker; cat <file>`` for every file — battery ×4, every zone's type and temp, every CPU's frequency, the
app's /proc status — then ``ls`` of the thermal and CPU dirs, all in one shell call per sample):

- ``virtual``: the embedded virtual device (private adb server, simulated thermal/battery files, 1 zone, no cpufreq)
  driven through the real adb binary; no app runs, so no pid (its /proc status would add one file to both designs).
- ``phone-like``: a temp /sys tree shaped like a flagship phone (``--zones`` thermal zones, ``--cpus`` CPUs), read
  by a toy echo/cat/ls shell — a model of the layout, not a phone; it shows how the old cost grows with zones.

Processes are counted from every command the sampler sent, with ``device_processes`` (the ``sh`` adb starts plus
each non-builtin command: ``cat``, ``ls``, ``dumpsys``; ``echo`` is an mksh builtin). Both designs run for the same
duration at the same interval; printed: shell calls, device processes per sample and per second, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.device.adb import run_adb  # noqa: E402
from pipeline.device.connect import get_device  # noqa: E402
from pipeline.device.telemetry import (  # noqa: E402
    BATTERY_DIR,
    CPU_DIR,
    THERMAL_DIR,
    TelemetrySampler,
    device_processes,
)
from pipeline.virtual import stop  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Counting:
    """Wraps ``shell(cmd)``: counts calls and the device processes each command starts."""

    def __init__(self, shell: Callable[[str], str]) -> None:
        self.shell = shell
        self.calls = 0
        self.processes = 0

    def __call__(self, cmd: str) -> str:
        self.calls += 1
        self.processes += device_processes(cmd)
        return self.shell(cmd)


def legacy_command(zones: list[str], cpus: list[str], pid: int | None) -> str:
    """The previous sampler's per-sample command (TelemetrySampler.command + its re-listing), rebuilt here."""
    paths = [f"{BATTERY_DIR}/{f}" for f in ("current_now", "voltage_now", "temp", "status")]
    for z in zones:
        paths += [f"{THERMAL_DIR}/{z}/type", f"{THERMAL_DIR}/{z}/temp"]
    paths += [f"{CPU_DIR}/{c}/cpufreq/scaling_cur_freq" for c in cpus]
    if pid is not None:
        paths.append(f"/proc/{pid}/status")
    n = len(paths)
    cmd = "; ".join(f"echo ---odeval:{i}---; cat {shlex.quote(p)}" for i, p in enumerate(paths))
    return cmd + "".join(f"; echo ---odeval:{n + i}---; ls {d}" for i, d in enumerate((THERMAL_DIR, CPU_DIR)))


def run_for(seconds: float, interval: float, sample: Callable[[], object]) -> int:
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        sample()
        n += 1
        time.sleep(max(0.0, interval - (time.monotonic() - t)))
    return n


def measure(name: str, shell: Callable[[str], str], pid: int | None, seconds: float, interval: float) -> None:
    after = Counting(shell)
    sampler = TelemetrySampler(after, pid=pid, interval_s=interval)
    n_after = run_for(seconds, interval, sampler.sample)
    zones, cpus = sampler._zones or [], sampler._cpus or []  # the layout the new sampler discovered
    before = Counting(shell)
    n_before = run_for(seconds, interval, lambda: before(legacy_command(zones, cpus, pid)))
    steady = device_processes(sampler.sample_command(pid))  # what every sample between discoveries costs
    discovery = (after.processes - steady * (after.calls - 2 * sampler.discoveries)) / sampler.discoveries
    per_before = before.processes / n_before
    amortized = steady + discovery * interval / sampler.rediscover_s
    print(f"\n[{name}] {len(zones)} thermal zones, {len(cpus)} CPUs, pid={pid}, {seconds:g} s at {interval:g} s")
    print(f"before: {n_before} samples, {before.calls} shell calls, {per_before:.1f} device processes/sample"
          f" = {per_before / interval:.1f}/s at this interval, {per_before:.1f}/s at 1 s")
    print(f"after:  {n_after} samples, {after.calls} shell calls ({sampler.discoveries} discovery pass = 2 calls),"
          f" {steady} processes/sample in steady state, {discovery:.0f} per discovery (every"
          f" {sampler.rediscover_s:g} s) -> {amortized:.2f}/sample amortized = {amortized / interval:.1f}/s")
    print(f"ratio before/after (processes per sample, amortized): {per_before / amortized:.1f}x")
    last = sampler.samples[-1]
    print(f"last sample: {len(last['thermal'] or {})} zones, battery {last['battery_voltage_v']} V, "
          f"vm_rss_kb {last['vm_rss_kb']}, null fields: {sorted(last['reasons'])}")


def phone_like(root: Path, zones: int, cpus: int) -> Callable[[str], str]:
    def w(rel: str, text: str) -> None:
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    for z in range(zones):
        w(f"{THERMAL_DIR}/thermal_zone{z}/type", f"zone-{z}\n")
        w(f"{THERMAL_DIR}/thermal_zone{z}/temp", f"{35000 + 100 * z}\n")
    for c in range(cpus):
        w(f"{CPU_DIR}/cpu{c}/cpufreq/scaling_cur_freq", f"{1_000_000 + c}\n")
    for f, v in (("current_now", "-400000"), ("voltage_now", "3900000"), ("temp", "300"), ("status", "Discharging")):
        w(f"{BATTERY_DIR}/{f}", v + "\n")
    w("/proc/4242/status", "Name:\tsimple_app\nVmHWM:\t 2000 kB\nVmRSS:\t 1900 kB\n")

    def shell(cmd: str) -> str:
        out = []
        for seg in cmd.split(";"):
            argv = [a for a in shlex.split(seg) if a != "2>/dev/null"]
            if not argv:
                continue
            if argv[0] == "echo":
                out.append(" ".join(argv[1:]) + "\n")
            for a in argv[1:] if argv[0] in ("cat", "ls") else []:
                p = root / a.lstrip("/")
                if argv[0] == "cat" and p.is_file():
                    out.append(p.read_text())
                elif argv[0] == "ls" and p.is_dir():
                    out.append("\n".join(sorted(x.name for x in p.iterdir())) + "\n")
        return "".join(out)

    return shell


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--zones", type=int, default=80)
    ap.add_argument("--cpus", type=int, default=8)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="odeval-telemetry-load-") as tmp:
        measure("phone-like", phone_like(Path(tmp) / "phone", args.zones, args.cpus), 4242, args.seconds,
                args.interval)
        adb_port, root = free_port(), Path(tmp) / "virtual"
        home = Path(tmp) / "home"
        home.mkdir()
        env = {"HOME": str(home)}  # the private server's adbkey lives here, not in the user's ~/.android
        run_adb(["start-server"], port=adb_port, env=env)
        try:
            dev = get_device("virtual", adb_port=adb_port, virtual_root=root, virtual_port=free_port(),
                             virtual_options={"simulate_thermal": True})
            measure("virtual", lambda c: dev.shell(c, timeout=30), None, args.seconds, args.interval)
        finally:
            stop(root)
            run_adb(["kill-server"], port=adb_port)
    print(f"\n(processes counted per command with device_processes; host {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
