"""pipeline.device.telemetry over a temp /sys tree: a toy echo/cat/ls shell (the virtual device's subset) and the
real /bin/sh (stderr merged, as adb shell v1 returns it), and the virtual device through the real adb."""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pipeline.device.telemetry import (
    TelemetryError,
    TelemetrySampler,
    device_processes,
    parse_dumpsys_battery,
    parse_sections,
)


def write(root: Path, path: str, text: str) -> None:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


@pytest.fixture
def phone(tmp_path: Path) -> Path:
    """A phone-like tree: 2 thermal zones (one without a trailing newline, one reporting whole degrees),
    a duplicate zone type, battery files, 2 CPUs of which cpu1 is offline (no cpufreq)."""
    write(tmp_path, "/sys/class/thermal/thermal_zone0/type", "cpu-0-0\n")
    write(tmp_path, "/sys/class/thermal/thermal_zone0/temp", "45300")
    write(tmp_path, "/sys/class/thermal/thermal_zone1/type", "battery\n")
    write(tmp_path, "/sys/class/thermal/thermal_zone1/temp", "31\n")
    write(tmp_path, "/sys/class/thermal/thermal_zone10/type", "cpu-0-0\n")
    write(tmp_path, "/sys/class/thermal/thermal_zone10/temp", "47000\n")
    (tmp_path / "sys/class/thermal/cooling_device0").mkdir()
    write(tmp_path, "/sys/class/power_supply/battery/current_now", "-412000\n")
    write(tmp_path, "/sys/class/power_supply/battery/voltage_now", "3870000\n")
    write(tmp_path, "/sys/class/power_supply/battery/temp", "312\n")
    write(tmp_path, "/sys/class/power_supply/battery/status", "Discharging\n")
    write(tmp_path, "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "1804800\n")
    (tmp_path / "sys/devices/system/cpu/cpu1").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/cpufreq").mkdir(parents=True)
    write(tmp_path, "/proc/4242/status", "Name:\tsimple_app\nVmHWM:\t  204800 kB\nVmRSS:\t  198000 kB\n")
    return tmp_path


def toy_shell(root: Path, *, stderr_merged: bool, calls: list[str] | None = None, dumpsys: str | None = None,
              denied: tuple[str, ...] = ()):
    """The virtual device's subset: `;`-separated `echo`, `cat`, `ls`, `2>/dev/null`; anything else is 'not found'.
    ``dumpsys``: what `dumpsys battery` prints (None: not found, as on the virtual device); ``denied``: device path
    prefixes whose reads fail with EACCES (SELinux on some phones)."""

    def shell(cmd: str) -> str:
        if calls is not None:
            calls.append(cmd)
        out = []
        for seg in cmd.split(";"):
            argv = shlex.split(seg)
            if not argv:
                continue
            quiet = "2>/dev/null" in argv
            argv = [a for a in argv if a != "2>/dev/null"]
            name, args = argv[0], argv[1:]
            err = (lambda msg: None) if quiet or not stderr_merged else out.append
            if name == "echo":
                out.append(" ".join(args) + "\n")
            elif name in ("cat", "ls"):
                for a in args:
                    p = root / a.lstrip("/")
                    if a.startswith(denied) and denied:
                        err(f"{name}: {a}: Permission denied\n")
                    elif name == "cat" and p.is_file():
                        out.append(p.read_text())
                    elif name == "ls" and p.is_dir():
                        out.append("\n".join(sorted(x.name for x in p.iterdir())) + "\n")
                    else:
                        err(f"{name}: {a}: No such file or directory\n")
            elif name == "dumpsys" and dumpsys is not None and args == ["battery"]:
                out.append(dumpsys)
            else:
                err(f"{name}: not found\n")
        return "".join(out)

    return shell


def host_sh(root: Path):
    """Run the sampler's command with the real /bin/sh, /sys and /proc/4242 mapped into root, stderr merged."""

    def shell(cmd: str) -> str:
        mapped = cmd.replace("/sys/", f"{root}/sys/").replace("/proc/4242/", f"{root}/proc/4242/")
        mapped = mapped.replace("ls /sys", f"ls {root}/sys")
        r = subprocess.run(["/bin/sh", "-c", mapped], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           stdin=subprocess.DEVNULL, check=False)
        return r.stdout

    return shell


def check_full_sample(s: dict) -> None:
    assert s["thermal"] == {"cpu-0-0": pytest.approx(45.3), "battery": pytest.approx(31.0),
                            "cpu-0-0@thermal_zone10": pytest.approx(47.0)}
    assert s["battery_current_a"] == pytest.approx(-0.412)  # raw sign kept
    assert s["battery_voltage_v"] == pytest.approx(3.87)
    assert s["power_w"] == pytest.approx(0.412 * 3.87)  # |I|·V
    assert s["battery_temp_c"] == pytest.approx(31.2)
    assert s["battery_status"] == "Discharging"
    assert s["cpu_freq_khz"] == {"cpu0": 1804800}
    assert s["vm_rss_kb"] == 198000 and s["vm_hwm_kb"] == 204800
    assert s["reasons"] == {}
    assert isinstance(s["t"], float) and s["dt"] >= 0 and "error" not in s


@pytest.mark.parametrize("stderr_merged", [False, True])
def test_sample_toy_shell(phone: Path, stderr_merged: bool) -> None:
    calls: list[str] = []
    sampler = TelemetrySampler(toy_shell(phone, stderr_merged=stderr_merged, calls=calls), pid=4242)
    check_full_sample(sampler.sample())  # discovery pass
    n_discovery = len(calls)
    for _ in range(3):
        check_full_sample(sampler.sample())  # steady state: positional parse of one cat
    assert len(calls) == n_discovery + 3, "one shell command per sample once the tree is discovered"
    # one cat (zone0/temp has no trailing newline: an `echo` keeps lines aligned, and a second cat follows it)
    assert device_processes(calls[-1]) == 1 + 2
    for seg in calls[-1].split(";"):
        assert shlex.split(seg)[0] in ("echo", "cat"), seg
    assert not any(c in calls[-1] for c in ("$(", "`", "*", "|", "&&", "dumpsys"))
    assert sampler.discoveries == 1


def test_one_process_per_sample_when_files_end_in_newline(phone: Path) -> None:
    write(phone, "/sys/class/thermal/thermal_zone0/temp", "45300\n")
    calls: list[str] = []
    sampler = TelemetrySampler(toy_shell(phone, stderr_merged=True, calls=calls), pid=4242)
    sampler.sample()
    check_full_sample(sampler.sample())
    assert device_processes(calls[-1]) == 2  # the sh adb starts + one cat, whatever the number of files
    # the previous design: `echo marker; cat file` per file (4 battery, 3 zones × type+temp, 2 CPUs, status) + 2 ls
    types = [f"/sys/class/thermal/{z}/type" for z in ("thermal_zone0", "thermal_zone1", "thermal_zone10")]
    files = sampler.value_paths() + types + ["/proc/4242/status"]
    old = "; ".join(f"echo m; cat {p}" for p in files) + "; ls /sys/class/thermal; ls /sys/devices/system/cpu"
    assert len(files) == 13 and device_processes(old) == 1 + 13 + 2


def test_layout_change_rediscovers_without_shifting(phone: Path) -> None:
    calls: list[str] = []
    sampler = TelemetrySampler(toy_shell(phone, stderr_merged=False, calls=calls), pid=4242)
    sampler.sample()
    (phone / "sys/class/power_supply/battery/temp").unlink()  # a file vanishes mid-run (the middle of the cat)
    s = sampler.sample()
    assert sampler.discoveries == 2  # the line count no longer matched: re-learnt, values from discovery
    assert s["battery_temp_c"] is None and s["reasons"]["battery_temp_c"].endswith("battery/temp")
    assert s["battery_status"] == "Discharging" and s["battery_voltage_v"] == pytest.approx(3.87)
    assert s["cpu_freq_khz"] == {"cpu0": 1804800} and s["vm_rss_kb"] == 198000
    s = sampler.sample()
    assert sampler.discoveries == 2 and s["battery_status"] == "Discharging" and s["battery_temp_c"] is None
    (phone / "proc/4242/status").unlink()  # the app exits: not a layout change
    s = sampler.sample()
    assert sampler.discoveries == 2 and s["vm_rss_kb"] is None and s["cpu_freq_khz"] == {"cpu0": 1804800}


def test_periodic_rediscovery(phone: Path) -> None:
    sampler = TelemetrySampler(toy_shell(phone, stderr_merged=False), pid=4242, rediscover_s=0)
    for _ in range(3):
        check_full_sample(sampler.sample())
    assert sampler.discoveries == 3


DUMPSYS = """Current Battery Service state:
  AC powered: false
  USB powered: true
  Max charging current: 500000
  status: 3
  health: 2
  present: true
  level: 81
  scale: 100
  voltage: 3912
  temperature: 287
  technology: Li-ion
"""


def test_dumpsys_battery_fallback(phone: Path) -> None:
    calls: list[str] = []
    shell = toy_shell(phone, stderr_merged=True, calls=calls, dumpsys=DUMPSYS, denied=("/sys/class/power_supply",))
    sampler = TelemetrySampler(shell, pid=4242)
    for s in (sampler.sample(), sampler.sample()):  # discovery, then steady state
        assert s["battery_source"] == "dumpsys battery"
        assert s["battery_voltage_v"] == pytest.approx(3.912) and s["battery_temp_c"] == pytest.approx(28.7)
        assert s["battery_status"] == "Discharging"
        assert s["battery_current_a"] is None and "dumpsys battery has no current" in s["reasons"]["battery_current_a"]
        assert s["power_w"] is None and s["thermal"]["battery"] == pytest.approx(31.0) and s["vm_rss_kb"] == 198000
    assert "dumpsys battery" in calls[-1] and device_processes(calls[-1]) == 1 + 2 + 1


def test_no_dumpsys_no_fallback(phone: Path) -> None:
    calls: list[str] = []
    shell = toy_shell(phone, stderr_merged=True, calls=calls, denied=("/sys/class/power_supply",))
    sampler = TelemetrySampler(shell, pid=4242)
    sampler.sample()
    s = sampler.sample()
    assert "dumpsys" not in calls[-1]  # not found once: never spawned again
    assert s["battery_source"] == "sysfs" and s["battery_voltage_v"] is None
    assert s["reasons"]["battery_voltage_v"] == "not exposed by device: /sys/class/power_supply/battery/voltage_now"


def test_parse_dumpsys_battery() -> None:
    assert parse_dumpsys_battery(DUMPSYS) == {"voltage_v": 3.912, "temp_c": 28.7, "status": "Discharging"}
    assert parse_dumpsys_battery("/system/bin/sh: dumpsys: not found") is None
    assert parse_dumpsys_battery(None) is None


def test_sample_real_sh_with_merged_stderr(phone: Path) -> None:
    (phone / "sys/class/power_supply/battery/temp").unlink()  # a missing file in the middle of the command
    sampler = TelemetrySampler(host_sh(phone), pid=4242)
    sampler.sample()
    s = sampler.sample()  # the steady-state command, run by a real POSIX sh
    assert sampler.discoveries == 1
    assert s["battery_temp_c"] is None
    assert s["reasons"]["battery_temp_c"] == "not exposed by device: /sys/class/power_supply/battery/temp"
    assert s["battery_status"] == "Discharging" and s["power_w"] is not None  # neighbours unaffected
    assert s["thermal"]["battery"] == pytest.approx(31.0)
    assert s["vm_rss_kb"] == 198000


def test_real_proc_status_of_this_process(tmp_path: Path) -> None:
    shell = toy_shell(Path("/"), stderr_merged=True)
    s = TelemetrySampler(shell, pid=os.getpid()).sample()
    assert s["vm_rss_kb"] is not None and s["vm_hwm_kb"] >= s["vm_rss_kb"] > 0


def test_bare_device_every_field_null_with_reason(tmp_path: Path) -> None:
    s = TelemetrySampler(toy_shell(tmp_path, stderr_merged=True)).sample()
    for field in ("thermal", "battery_current_a", "battery_voltage_v", "battery_temp_c", "battery_status",
                  "power_w", "cpu_freq_khz", "vm_rss_kb", "vm_hwm_kb"):
        assert s[field] is None, field
        assert s["reasons"][field], field
    assert s["reasons"]["vm_rss_kb"] == "no app pid set"
    assert s["reasons"]["battery_current_a"].startswith("not exposed by device: /sys/class/power_supply/battery/")


def test_gone_process_and_mv_voltage(phone: Path) -> None:
    write(phone, "/sys/class/power_supply/battery/voltage_now", "3870\n")  # vendor reporting mV
    s = TelemetrySampler(toy_shell(phone, stderr_merged=True), pid=999999).sample()
    assert s["battery_voltage_v"] == pytest.approx(3.87)
    assert s["vm_rss_kb"] is None and "/proc/999999/status" in s["reasons"]["vm_rss_kb"]
    assert "gone" in s["reasons"]["vm_hwm_kb"]
    write(phone, "/proc/31/status", "Name:\tkthreadd\nState:\tS\n")  # kernel threads have no Vm* lines
    s = TelemetrySampler(toy_shell(phone, stderr_merged=True), pid=31).sample()
    assert s["reasons"]["vm_rss_kb"] == "no VmRSS line in /proc/31/status"


def test_shell_failure_recorded_not_raised(phone: Path) -> None:
    ok = toy_shell(phone, stderr_merged=False)
    state = {"fail": True}

    def flaky(cmd: str) -> str:
        if state["fail"]:
            raise ConnectionError("device offline")
        return ok(cmd)

    sampler = TelemetrySampler(flaky, pid=4242)
    s = sampler.sample()
    assert "device offline" in s["error"] and s["thermal"] is None
    state["fail"] = False
    check_full_sample(sampler.sample())  # discovery retried once the device is back


def test_parse_sections_robust() -> None:
    out = "junk\r\n---odeval:0---\r\n12\r\n---odeval:1---\ncat: /x: Permission denied\n---odeval:2---abc---odeval:9---z"
    assert parse_sections(out, 4) == ["12", None, "abc", None]
    assert parse_sections("", 2) == [None, None]


def test_background_thread_and_pid_change(phone: Path) -> None:
    seen: list[dict] = []
    sampler = TelemetrySampler(toy_shell(phone, stderr_merged=False), interval_s=0.01, pid=4242,
                               on_sample=seen.append)
    sampler.start()
    with pytest.raises(TelemetryError):
        sampler.start()

    def wait_for(pred) -> None:
        deadline = time.monotonic() + 30  # a generous safety net, not a timing assertion
        while not pred() and time.monotonic() < deadline:
            time.sleep(0.005)

    wait_for(lambda: len(sampler.samples) >= 3)
    write(phone, "/proc/777/status", "VmHWM:\t 10 kB\nVmRSS:\t 9 kB\n")
    sampler.pid = 777
    wait_for(lambda: any(s["pid"] == 777 for s in sampler.samples))
    out = sampler.stop()
    assert len(out) >= 4 and out == seen
    ts = [s["t"] for s in out]
    assert ts == sorted(ts)
    new = [s for s in out if s["pid"] == 777]
    assert new and new[-1]["vm_rss_kb"] == 9
    assert sampler.thread_error is None
    assert not any(t.name == "odeval-telemetry" for t in threading.enumerate())
    n = len(sampler.samples)
    time.sleep(0.05)
    assert len(sampler.samples) == n  # stopped means stopped


def test_bad_interval() -> None:
    with pytest.raises(TelemetryError, match="interval_s"):
        TelemetrySampler(lambda c: "", interval_s=0)


def test_virtual_device_through_real_adb(virtual_device) -> None:
    """The real thing: the bundled adb binary → adbutils → the virtual device's minimal shell."""
    virtual_device.set_faults(simulate_thermal=True)
    calls: list[str] = []

    def shell(cmd: str) -> str:
        calls.append(cmd)
        return virtual_device.device.shell(cmd, timeout=30)

    sampler = TelemetrySampler(shell)
    first = sampler.sample()  # discovery (the virtual device creates its simulated /sys files when listed)
    assert first["battery_current_a"] is not None and "cpu-0-0-usr" in first["thermal"]
    n = len(calls)
    for _ in range(3):
        s = sampler.sample()
        assert "cpu-0-0-usr" in s["thermal"] and 10 < s["thermal"]["cpu-0-0-usr"] < 80
        assert s["battery_current_a"] is not None and s["battery_voltage_v"] is not None
        assert s["power_w"] == pytest.approx(abs(s["battery_current_a"]) * s["battery_voltage_v"])
        assert s["battery_temp_c"] is not None
        assert s["cpu_freq_khz"] is None and s["reasons"]["cpu_freq_khz"].startswith("not exposed by device")
    assert len(calls) == n + 3 and sampler.discoveries == 1  # steady state: one `cat` per sample
    assert calls[-1].startswith("cat ") and device_processes(calls[-1]) == 2
    virtual_device.set_faults()  # simulation off: the files disappear → rediscovery → null with reasons
    bare = sampler.sample()
    assert sampler.discoveries == 2
    assert bare["thermal"] is None and bare["battery_current_a"] is None and "error" not in bare
    assert bare["reasons"]["battery_current_a"] == "not exposed by device: /sys/class/power_supply/battery/current_now"
