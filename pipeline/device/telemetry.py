"""Device telemetry sampled during a run: thermal zones, battery, CPU frequencies, the app's memory.

Why it looks like this — the sampler must not load the phone it measures:
- Steady state is ONE shell call per sample running ONE external process: ``cat f1 f2 … 2>/dev/null`` over every
  value file (``echo`` is a shell builtin in mksh). A ``cat`` per file (the previous design) started 4 + 2·zones +
  CPUs + 1 toybox processes per second on the phone; ``benchmarks/telemetry_load.py`` measures both.
- Files are told apart by position: each sysfs attribute is one line, so the i-th line is the i-th file, and
  ``/proc/<pid>/status`` (multi-line, last) starts at its ``Name:`` line. Which files are readable, and each zone's
  ``type``, are learnt by a *discovery* pass (one marker-delimited ``echo``/``cat`` per file, the old robust way)
  at start, every ``rediscover_s``, and whenever a sample's line count does not match (a file vanished, a CPU went
  offline) — that sample is then taken from the discovery output, so a layout change never shifts values.
  A file without a trailing newline gets an ``echo`` after it (a new ``cat`` group) so lines stay aligned.
- Only ``echo``, ``cat``, ``ls``, ``;`` and ``2>/dev/null``: the virtual device's shell and toybox/mksh both have them.
- When no ``/sys/class/power_supply/battery`` file is readable (SELinux on some phones), battery voltage,
  temperature and status come from ``dumpsys battery`` in the same shell call (it reports no current: null).
- Every field that cannot be read is ``None`` with an entry in ``reasons`` ("not exposed by device: <path>"): a
  missing value is never invented.

Units and vendor conventions (Linux power_supply ABI; vendors deviate):
- thermal ``temp`` is millidegrees C; some zones report whole degrees — values with |v| < 1000 are taken as °C.
- battery ``current_now`` is µA, ``voltage_now`` µV (some vendors report mV: a value in 2000..6000 is taken as mV),
  ``temp`` deci-°C. The *sign* of ``current_now`` differs by vendor: some report discharge as negative (e.g. Pixel),
  others as positive (e.g. many Qualcomm/Samsung builds). ``battery_current_a`` keeps the raw sign; ``power_w`` uses
  |I|·V. While charging (``battery_status`` Charging/Full) the battery current is not the device's draw.
- ``dumpsys battery``: ``voltage`` mV, ``temperature`` deci-°C, ``status`` 1..5 (BatteryManager constants).
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["TelemetryError", "TelemetrySampler", "parse_sections", "parse_dumpsys_battery", "device_processes",
           "THERMAL_DIR", "CPU_DIR", "BATTERY_DIR"]

THERMAL_DIR = "/sys/class/thermal"
CPU_DIR = "/sys/devices/system/cpu"
BATTERY_DIR = "/sys/class/power_supply/battery"
BATTERY_FILES = ("current_now", "voltage_now", "temp", "status")
_MARK = "---odeval:{}---"
_MARK_RE = re.compile(r"---odeval:(\d+)---\r?\n?")
_CAT_ERROR = re.compile(r"^(?:\S*cat|/system/bin/sh|sh): .*", re.MULTILINE)
_ZONE_RE = r"thermal_zone\d+"
_CPU_RE = r"cpu\d+"
_DUMPSYS_MARK = "---odeval:dumpsys---"
_FIELDS = ("thermal", "battery_current_a", "battery_voltage_v", "battery_temp_c", "battery_status", "power_w",
           "cpu_freq_khz", "vm_rss_kb", "vm_hwm_kb")
_BATTERY_STATUS = {1: "Unknown", 2: "Charging", 3: "Discharging", 4: "Not charging", 5: "Full"}
# mksh builtins: they start no process on the phone (used to count what a command line spawns)
_SH_BUILTINS = {"echo", "true", "false", ":", "cd", "export", "test", "[", "read", "printf", "set", "unset", "exit"}


class TelemetryError(RuntimeError):
    """The sampler was misused (e.g. started twice, or a non-positive interval)."""


def _raw_sections(output: str, n: int) -> list[str | None]:
    """Marker-delimited output → n raw (unstripped) sections; None where a marker is missing."""
    sections: list[str | None] = [None] * n
    parts = _MARK_RE.split(output)
    for i in range(1, len(parts) - 1, 2):
        idx = int(parts[i])
        if 0 <= idx < n:
            sections[idx] = parts[i + 1].replace("\r", "")
    return sections


def parse_sections(output: str, n: int) -> list[str | None]:
    """Split marker-delimited ``cat`` output into n file contents; None for a missing/unreadable file.

    Robust to: files without a trailing newline (the next marker then follows on the same line), CRLF from a pty,
    ``cat: <path>: No such file or directory`` on merged stderr, and truncated output (missing markers → None).
    """
    sections: list[str | None] = [None] * n
    parts = _MARK_RE.split(output)
    # parts = [before, idx0, text0, idx1, text1, ...]
    for i in range(1, len(parts) - 1, 2):
        idx = int(parts[i])
        if not 0 <= idx < n:
            continue
        text = _CAT_ERROR.sub("", parts[i + 1].replace("\r", "")).strip()
        sections[idx] = text or None
    return sections


def _num(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None


def _status_kb(status: str | None, key: str) -> int | None:
    """``VmRSS:	  1234 kB`` → 1234 from /proc/<pid>/status text."""
    if status is None:
        return None
    m = re.search(rf"^{key}:\s*(\d+)\s*kB", status, re.MULTILINE)
    return int(m.group(1)) if m else None


def _names(listing: str | None, pattern: str) -> list[str]:
    """Entries of an ``ls`` output matching pattern, in numeric order (an ``ls:`` error line matches nothing)."""
    names = {n for n in (listing or "").split() if re.fullmatch(pattern, n)}
    return sorted(names, key=lambda n: int(re.sub(r"\D", "", n) or 0))


def _zone_celsius(raw: float) -> float:
    return raw / 1000.0 if abs(raw) >= 1000 else raw


def _volts(raw: float) -> float:
    return raw / 1000.0 if 2000 <= abs(raw) <= 6000 else raw / 1e6


def parse_dumpsys_battery(text: str | None) -> dict[str, Any] | None:
    """``dumpsys battery`` → {voltage_v, temp_c, status}; None if the text is not its output (e.g. not found)."""
    values = dict(re.findall(r"^\s*(voltage|temperature|status):\s*(-?\d+)\s*$", text or "", re.MULTILINE))
    if "voltage" not in values and "temperature" not in values:
        return None
    status = int(values["status"]) if "status" in values else None
    return {"voltage_v": int(values["voltage"]) / 1000.0 if "voltage" in values else None,
            "temp_c": int(values["temperature"]) / 10.0 if "temperature" in values else None,
            "status": _BATTERY_STATUS.get(status, str(status)) if status is not None else None}


def device_processes(command: str) -> int:
    """Processes one ``adb shell <command>`` starts on a phone: the ``sh`` plus every simple command that is not
    an mksh builtin (``cat``, ``ls``, ``dumpsys`` are toybox/system binaries, ``echo`` is not)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    count, first = 1, True
    for tok in lexer:
        if tok in (";", "&&", "||", "|", "&"):
            first = True
        elif first and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tok):
            count += tok not in _SH_BUILTINS
            first = False
    return count


class TelemetrySampler:
    """Samples device telemetry through ``shell(cmd) -> stdout`` on demand (``sample()``) or on a background
    thread (``start()``/``stop()``). Set ``.pid`` whenever the app process changes (fresh sessions).

    A sample: ``t`` (host monotonic s, midpoint of the shell call), ``dt`` (call duration), ``pid``, ``thermal``
    ({zone type: °C}), ``battery_current_a`` (raw sign), ``battery_voltage_v``, ``battery_temp_c``,
    ``battery_status``, ``power_w`` (|I|·V), ``cpu_freq_khz`` ({cpuN: kHz}), ``vm_rss_kb``, ``vm_hwm_kb``,
    ``reasons`` ({field: why it is None}), and ``error`` when the shell call itself failed.
    """

    def __init__(
        self,
        shell: Callable[[str], str],
        *,
        interval_s: float = 1.0,
        pid: int | None = None,
        on_sample: Callable[[dict[str, Any]], None] | None = None,
        rediscover_s: float = 60.0,
    ) -> None:
        if interval_s <= 0:
            raise TelemetryError(f"telemetry interval_s must be positive, got {interval_s!r}")
        self.shell = shell
        self.interval_s = interval_s
        self.pid = pid
        self.on_sample = on_sample
        self.rediscover_s = rediscover_s
        self._zones: list[str] | None = None
        self._cpus: list[str] | None = None
        self._zone_types: dict[str, str] = {}
        self._fast: list[str] | None = None  # value files read by the steady-state `cat`, in output line order
        self._no_newline: set[str] = set()  # files whose content has no trailing newline (an `echo` follows them)
        self._dumpsys = False  # battery from `dumpsys battery` (sysfs battery unreadable, dumpsys works)
        self._discovered_at = 0.0
        self.discoveries = 0  # how many discovery passes ran (start, periodic, layout changes)
        self._samples: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.thread_error: str | None = None  # last exception raised inside the background loop, if any

    # ------------------------------------------------------------------ discovery
    def _list_dirs(self) -> None:
        """Zone and CPU names (one shell call, two ``ls``)."""
        cmd = "; ".join(f"echo {_MARK.format(i)}; ls {shlex.quote(d)}" for i, d in enumerate((THERMAL_DIR, CPU_DIR)))
        zones, cpus = parse_sections(self.shell(cmd), 2)
        self._zones, self._cpus = _names(zones, _ZONE_RE), _names(cpus, _CPU_RE)

    def value_paths(self) -> list[str]:
        """Every sysfs value file a sample wants (zone types excluded: read once per discovery)."""
        paths = [f"{BATTERY_DIR}/{f}" for f in BATTERY_FILES]
        paths += [f"{THERMAL_DIR}/{z}/temp" for z in self._zones or []]
        paths += [f"{CPU_DIR}/{c}/cpufreq/scaling_cur_freq" for c in self._cpus or []]
        return paths

    @staticmethod
    def command(paths: list[str]) -> str:
        """Discovery: ``echo ---odeval:0---; cat P0 2>/dev/null; …`` — a marker before every file, paths quoted."""
        return "; ".join(f"echo {_MARK.format(i)}; cat {shlex.quote(p)} 2>/dev/null" for i, p in enumerate(paths))

    def _discover(self, pid: int | None) -> tuple[dict[str, str | None], str | None]:
        """Learn the layout and read every value once (returned for the current sample); shell errors propagate.

        One call lists the dirs, one reads every file behind markers plus ``dumpsys battery`` (kept for later
        samples only when no sysfs battery file is readable and dumpsys answers)."""
        self._list_dirs()
        values = self.value_paths()
        types = [f"{THERMAL_DIR}/{z}/type" for z in self._zones or []]
        paths = values + types + ([f"/proc/{int(pid)}/status"] if pid is not None else [])
        cmd = self.command(paths)
        sysfs_battery = [f"{BATTERY_DIR}/{f}" for f in BATTERY_FILES]
        cmd += f"; echo {_DUMPSYS_MARK}; dumpsys battery 2>/dev/null"
        head, _, dumpsys = self.shell(cmd).partition(_DUMPSYS_MARK)
        raw = dict(zip(paths, _raw_sections(head, len(paths)), strict=True))
        clean = {p: (_CAT_ERROR.sub("", t).strip() or None) if t is not None else None for p, t in raw.items()}
        self._zone_types = {z: clean[f"{THERMAL_DIR}/{z}/type"].splitlines()[0].strip()
                            for z in self._zones or [] if clean.get(f"{THERMAL_DIR}/{z}/type")}
        # the fast path reads only files that gave exactly one line; the rest stay null with a reason
        self._fast = [p for p in values if clean[p] is not None and len(clean[p].splitlines()) == 1]
        self._no_newline = {p for p in self._fast if not (raw[p] or "").endswith("\n")}
        battery_readable = any(clean[p] is not None for p in sysfs_battery)
        self._dumpsys = not battery_readable and parse_dumpsys_battery(dumpsys) is not None
        self._discovered_at = time.monotonic()
        self.discoveries += 1
        got = {p: clean[p] for p in values}
        if pid is not None:
            got[f"/proc/{int(pid)}/status"] = clean.get(f"/proc/{int(pid)}/status")
        return got, (dumpsys if self._dumpsys else None)

    def sample_command(self, pid: int | None) -> str:
        """Steady state: ``cat <values…> [/proc/<pid>/status] 2>/dev/null`` — one process (plus ``dumpsys battery``
        in the fallback); an ``echo`` after a file without trailing newline starts a new ``cat``."""
        files = list(self._fast or [])
        if pid is not None:
            files.append(f"/proc/{int(pid)}/status")
        groups: list[list[str]] = [[]]
        for f in files:
            groups[-1].append(f)
            if f in self._no_newline:
                groups.append([])
        parts = [f"cat {' '.join(shlex.quote(f) for f in g)} 2>/dev/null" for g in groups if g]
        cmd = "; echo; ".join(parts) if parts else "true"
        if self._dumpsys:
            cmd += f"; echo {_DUMPSYS_MARK}; dumpsys battery 2>/dev/null"
        return cmd

    def _split_fast(self, out: str, pid: int | None) -> tuple[dict[str, str | None], str | None] | None:
        """Positional parse of the steady-state output; None when the lines do not match the layout."""
        out, _, dumpsys = out.replace("\r", "").partition(_DUMPSYS_MARK)
        lines = out.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        status = None
        if pid is not None:
            at = next((i for i, ln in enumerate(lines) if ln.startswith("Name:")), None)
            if at is not None:
                status, lines = "\n".join(lines[at:]), lines[:at]
        fast = self._fast or []
        if len(lines) != len(fast) or any(not ln.strip() for ln in lines):
            return None
        raw: dict[str, str | None] = {p: ln.strip() for p, ln in zip(fast, lines, strict=True)}
        if pid is not None:
            raw[f"/proc/{int(pid)}/status"] = status
        return raw, (dumpsys if self._dumpsys else None)

    # ------------------------------------------------------------------ sampling
    def sample(self) -> dict[str, Any]:
        """Read every field once and return the sample dict (also stored for ``stop()``)."""
        pid = self.pid
        t0 = time.monotonic()
        error = None
        got = None
        try:
            if self._fast is not None and t0 - self._discovered_at < self.rediscover_s:
                got = self._split_fast(self.shell(self.sample_command(pid)), pid)
            if got is None:  # first sample, periodic refresh, or the layout changed under us
                got = self._discover(pid)
        except Exception as exc:  # noqa: BLE001 — a lost device must not kill the run's sampling thread
            error = f"{type(exc).__name__}: {exc}"
        t1 = time.monotonic()
        raw, dumpsys = got if got is not None else ({}, None)
        s = self._parse(raw, pid, parse_dumpsys_battery(dumpsys) if dumpsys else None)
        # the files are read somewhere inside the call: stamp the midpoint, keep the call time as its uncertainty
        s["t"], s["dt"] = (t0 + t1) / 2, t1 - t0
        if error:
            s["error"] = error
        with self._lock:
            self._samples.append(s)
        if self.on_sample is not None:
            self.on_sample(s)
        return s

    def _parse(self, raw: dict[str, str | None], pid: int | None, dumpsys: dict[str, Any] | None = None
               ) -> dict[str, Any]:
        s: dict[str, Any] = {"t": None, "dt": None, "pid": pid, **dict.fromkeys(_FIELDS), "reasons": {},
                             "battery_source": "dumpsys battery" if dumpsys else "sysfs"}
        reasons: dict[str, str] = s["reasons"]

        def need(field: str, path: str, value: Any) -> Any:
            if value is None:
                reasons[field] = f"not exposed by device: {path}"
            return value

        cur_p, volt_p, temp_p, stat_p = (f"{BATTERY_DIR}/{f}" for f in ("current_now", "voltage_now", "temp", "status"))
        cur, volt, btemp = _num(raw.get(cur_p)), _num(raw.get(volt_p)), _num(raw.get(temp_p))
        s["battery_current_a"] = need("battery_current_a", cur_p, None if cur is None else cur / 1e6)
        s["battery_voltage_v"] = need("battery_voltage_v", volt_p, None if volt is None else _volts(volt))
        s["battery_temp_c"] = need("battery_temp_c", temp_p, None if btemp is None else btemp / 10.0)
        status = raw.get(stat_p)
        s["battery_status"] = need("battery_status", stat_p, status.splitlines()[0].strip() if status else None)
        if dumpsys:  # sysfs battery unreadable: what dumpsys battery has (no current in its output)
            for field, key in (("battery_voltage_v", "voltage_v"), ("battery_temp_c", "temp_c"),
                               ("battery_status", "status")):
                s[field] = dumpsys[key]
                if s[field] is None:
                    reasons[field] = f"not in dumpsys battery output ({key})"
                else:
                    reasons.pop(field, None)
            reasons["battery_current_a"] = f"not exposed by device: {cur_p} unreadable, dumpsys battery has no current"
        if s["battery_current_a"] is not None and s["battery_voltage_v"] is not None:
            s["power_w"] = abs(s["battery_current_a"]) * s["battery_voltage_v"]
        else:
            reasons["power_w"] = "needs battery current and voltage"

        thermal: dict[str, float] = {}
        for z in self._zones or []:
            temp = _num(raw.get(f"{THERMAL_DIR}/{z}/temp"))
            if temp is None:
                continue
            name = self._zone_types.get(z, z)
            thermal[name if name not in thermal else f"{name}@{z}"] = _zone_celsius(temp)
        s["thermal"] = need("thermal", f"{THERMAL_DIR}/thermal_zone*/temp", thermal or None)

        freqs = {c: int(f) for c in self._cpus or []
                 if (f := _num(raw.get(f"{CPU_DIR}/{c}/cpufreq/scaling_cur_freq"))) is not None}
        s["cpu_freq_khz"] = need("cpu_freq_khz", f"{CPU_DIR}/cpu*/cpufreq/scaling_cur_freq", freqs or None)

        if pid is None:
            reasons["vm_rss_kb"] = reasons["vm_hwm_kb"] = "no app pid set"
        else:
            status_p = f"/proc/{int(pid)}/status"
            proc = raw.get(status_p)
            for field, key in (("vm_rss_kb", "VmRSS"), ("vm_hwm_kb", "VmHWM")):
                s[field] = _status_kb(proc, key)
                if s[field] is None:
                    reasons[field] = (f"not exposed by device: {status_p} (process {pid} gone?)" if proc is None
                                      else f"no {key} line in {status_p}")
        return s

    # ------------------------------------------------------------------ background thread
    def start(self) -> None:
        """Sample every ``interval_s`` on a daemon thread until ``stop()``; the first sample is taken at once."""
        if self._thread is not None:
            raise TelemetryError("TelemetrySampler.start() called twice without stop()")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="odeval-telemetry", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 — e.g. on_sample failed to write; keep the run going
                self.thread_error = f"{type(exc).__name__}: {exc}"
            next_t += self.interval_s
            # keep the cadence; if a sample took longer than the interval, start the next one right away
            self._stop.wait(max(0.0, next_t - time.monotonic()))
            next_t = max(next_t, time.monotonic() - self.interval_s)

    def stop(self) -> list[dict[str, Any]]:
        """Stop the thread (waits for a sample in flight) and return all samples taken so far, in order."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.samples

    @property
    def samples(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._samples)
