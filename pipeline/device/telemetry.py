"""Device telemetry sampled during a run: thermal zones, battery, CPU frequencies, the app's memory.

Why it looks like this:
- One ``shell`` call per sample, built only from ``echo`` and ``cat`` of explicit paths joined by ``;`` — the
  virtual device's minimal shell has no loops, ``$(...)`` or globs, and a real phone's mksh may deny some files.
  Each ``cat`` is preceded by a marker line ``---odeval:<i>---`` so that a missing/unreadable file (empty section
  or a ``cat: …`` error on merged stderr) never shifts or hides the values of the others.
- Zone and CPU names come from ``ls`` (globs cannot be used): one ``ls`` per directory before the first sample, then
  the sample command itself ends with the two ``ls`` so the next sample sees zones/CPUs that appeared later.
- Every field that cannot be read is ``None`` with an entry in ``reasons`` ("not exposed by device: <path>"): a
  missing value is never invented.

Units and vendor conventions (Linux power_supply ABI; vendors deviate):
- thermal ``temp`` is millidegrees C; some zones report whole degrees — values with |v| < 1000 are taken as °C.
- battery ``current_now`` is µA, ``voltage_now`` µV (some vendors report mV: a value in 2000..6000 is taken as mV),
  ``temp`` deci-°C. The *sign* of ``current_now`` differs by vendor: some report discharge as negative (e.g. Pixel),
  others as positive (e.g. many Qualcomm/Samsung builds). ``battery_current_a`` keeps the raw sign; ``power_w`` uses
  |I|·V. While charging (``battery_status`` Charging/Full) the battery current is not the device's draw.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["TelemetryError", "TelemetrySampler", "parse_sections", "THERMAL_DIR", "CPU_DIR", "BATTERY_DIR"]

THERMAL_DIR = "/sys/class/thermal"
CPU_DIR = "/sys/devices/system/cpu"
BATTERY_DIR = "/sys/class/power_supply/battery"
_MARK = "---odeval:{}---"
_MARK_RE = re.compile(r"---odeval:(\d+)---\r?\n?")
_CAT_ERROR = re.compile(r"^(?:\S*cat|/system/bin/sh|sh): .*", re.MULTILINE)
_ZONE_RE = r"thermal_zone\d+"
_CPU_RE = r"cpu\d+"
_LISTED = (THERMAL_DIR, CPU_DIR)  # re-listed at the end of every sample command, in this order
_FIELDS = ("thermal", "battery_current_a", "battery_voltage_v", "battery_temp_c", "battery_status", "power_w",
           "cpu_freq_khz", "vm_rss_kb", "vm_hwm_kb")


class TelemetryError(RuntimeError):
    """The sampler was misused (e.g. started twice, or a non-positive interval)."""


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
    ) -> None:
        if interval_s <= 0:
            raise TelemetryError(f"telemetry interval_s must be positive, got {interval_s!r}")
        self.shell = shell
        self.interval_s = interval_s
        self.pid = pid
        self.on_sample = on_sample
        self._zones: list[str] | None = None
        self._cpus: list[str] | None = None
        self._samples: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.thread_error: str | None = None  # last exception raised inside the background loop, if any

    # ------------------------------------------------------------------ discovery and command
    def _list(self, directory: str, pattern: str) -> list[str] | None:
        """Names in ``directory`` matching ``pattern`` (one ``ls``); [] when the directory is not readable,
        None when the shell itself failed (device busy/lost: discovery is retried on the next sample)."""
        try:
            out = self.shell(f"ls {shlex.quote(directory)}")
        except Exception:  # noqa: BLE001 — retried on the next sample
            return None
        return _names(out, pattern)

    def _discover(self) -> None:
        if self._zones is None:
            self._zones = self._list(THERMAL_DIR, _ZONE_RE)
        if self._cpus is None:
            self._cpus = self._list(CPU_DIR, _CPU_RE)

    def paths(self, pid: int | None) -> list[str]:
        """Explicit file paths read by one sample, in a fixed order (see ``_parse`` for the layout)."""
        self._discover()
        paths = [f"{BATTERY_DIR}/{f}" for f in ("current_now", "voltage_now", "temp", "status")]
        for z in self._zones or []:
            paths += [f"{THERMAL_DIR}/{z}/type", f"{THERMAL_DIR}/{z}/temp"]
        paths += [f"{CPU_DIR}/{c}/cpufreq/scaling_cur_freq" for c in self._cpus or []]
        if pid is not None:
            paths.append(f"/proc/{int(pid)}/status")
        return paths

    @staticmethod
    def command(paths: list[str]) -> str:
        """``echo ---odeval:0---; cat P0; echo ---odeval:1---; cat P1; …`` — only echo and cat, paths quoted."""
        return "; ".join(f"echo {_MARK.format(i)}; cat {shlex.quote(p)}" for i, p in enumerate(paths))

    # ------------------------------------------------------------------ sampling
    def sample(self) -> dict[str, Any]:
        """Read every field once (one shell call) and return the sample dict (also stored for ``stop()``)."""
        pid = self.pid
        paths = self.paths(pid)
        # The same command re-lists the zone/CPU dirs *after* the cats, so the next sample follows hotplugged
        # CPUs and late-appearing zones without an extra shell call.
        n = len(paths)
        relist = "".join(f"; echo {_MARK.format(n + i)}; ls {shlex.quote(d)}" for i, d in enumerate(_LISTED))
        t0 = time.monotonic()
        try:
            out = self.shell(self.command(paths) + relist)
            error = None
        except Exception as exc:  # noqa: BLE001 — a lost device must not kill the run's sampling thread
            out, error = "", f"{type(exc).__name__}: {exc}"
        t1 = time.monotonic()
        sections = parse_sections(out, n + len(_LISTED))
        s = self._parse(dict(zip(paths, sections[:n], strict=True)), pid)
        if error is None:
            self._zones = _names(sections[n], _ZONE_RE)
            self._cpus = _names(sections[n + 1], _CPU_RE)
        # the files are read somewhere inside the call: stamp the midpoint, keep the call time as its uncertainty
        s["t"], s["dt"] = (t0 + t1) / 2, t1 - t0
        if error:
            s["error"] = error
        with self._lock:
            self._samples.append(s)
        if self.on_sample is not None:
            self.on_sample(s)
        return s

    def _parse(self, raw: dict[str, str | None], pid: int | None) -> dict[str, Any]:
        s: dict[str, Any] = {"t": None, "dt": None, "pid": pid, **dict.fromkeys(_FIELDS), "reasons": {}}
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
        if s["battery_current_a"] is not None and s["battery_voltage_v"] is not None:
            s["power_w"] = abs(s["battery_current_a"]) * s["battery_voltage_v"]
        else:
            reasons["power_w"] = "needs battery current and voltage"

        thermal: dict[str, float] = {}
        for z in self._zones or []:
            temp = _num(raw.get(f"{THERMAL_DIR}/{z}/temp"))
            if temp is None:
                continue
            name = (raw.get(f"{THERMAL_DIR}/{z}/type") or z).splitlines()[0].strip()
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
