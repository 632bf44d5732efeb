"""Options and injectable faults of the virtual device.

Options come from two layers: the ones given when the daemon starts (CLI ``--fault key=value``) and a JSON control
file ``<root>/state/faults.json`` that is re-read (cheaply, by mtime) before every operation.  The file layer
exists so that tests can change faults on a *running* daemon without restarting it (a restart would make the adb
server see the device go offline).  The control file lives in the host-only state dir (0700), never in the device
storage: nothing pushed over adb can change the daemon's behaviour.  The app command (test hook ``app_cmd``) is
not a fault at all: it is fixed when the daemon starts (``--app-cmd``) and a control file naming it is refused.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.virtual.layout import state_dir

GIB = 1 << 30
START_ONLY = frozenset({"app_cmd"})  # fixed when the daemon starts; never from the control file
log = logging.getLogger("odeval.virtual.security")


class FaultsError(Exception):
    """A bad fault/option name or value (CLI flag or faults.json)."""


@dataclass(frozen=True)
class Faults:
    """Everything that changes how the virtual device behaves; all off by default."""

    drop_push_after_bytes: int | None = None  # drop the whole transport after N bytes of one SEND
    bandwidth_bytes_per_s: int | None = None  # cap sync throughput (both directions)
    disk_full: bool = False  # SEND fails with ENOSPC, df shows 0 available
    capacity_bytes: int = 64 * GIB  # what df reports as the size of /data
    app_crash_after_tokens: int | None = None  # -> ODEVAL_FAULT_CRASH_AFTER_TOKENS
    app_hang: bool = False  # -> ODEVAL_FAULT_HANG=1
    app_invalid_utf8: bool = False  # -> ODEVAL_FAULT_INVALID_UTF8=1
    simulate_thermal: bool = False  # create /sys thermal + battery files with changing values
    standin_model: str | None = None  # host HF model dir used instead of a MobileQuant QNN dir (host-side only)
    # drop the whole transport (a USB cable pulled) once, right after the N-th finished answer (the `>>> ` that
    # follows it) counted over every shell stream since the faults last changed: a drop *between* answers
    drop_transport_after_answers: int | None = None
    # drop the whole transport once after N bytes of app output (stdout after a stream's banner `>>> `): mid-answer
    drop_transport_after_bytes: int | None = None
    # getprop values to report instead of the defaults (a fake phone, e.g. {"ro.soc.model": "SM8550"});
    # ro.odeval.virtual cannot be overridden (pipeline/virtual/props.py)
    props_override: dict[str, str] = field(default_factory=dict)
    # limits, each refused as a phone would: apps/processes → fork's "Try again", memory → killed (SIGKILL)
    max_apps: int = 4  # concurrent simple_app processes (each is a host process holding a model)
    max_processes: int = 64  # shell sessions + apps
    app_memory_bytes: int = 8 * GIB  # RLIMIT_DATA of each app: private writable memory

    def guest_env(self) -> dict[str, str]:
        """Environment variables through which the reference app learns about app-level faults."""
        env: dict[str, str] = {}
        if self.app_crash_after_tokens is not None:
            env["ODEVAL_FAULT_CRASH_AFTER_TOKENS"] = str(self.app_crash_after_tokens)
        if self.app_hang:
            env["ODEVAL_FAULT_HANG"] = "1"
        if self.app_invalid_utf8:
            env["ODEVAL_FAULT_INVALID_UTF8"] = "1"
        if self.standin_model:
            env["ODEVAL_STANDIN_MODEL"] = str(self.standin_model)
        return env

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS = {f.name: f for f in fields(Faults)}
_BOOL = {"disk_full", "app_hang", "app_invalid_utf8", "simulate_thermal"}
_INT = {"drop_push_after_bytes", "bandwidth_bytes_per_s", "capacity_bytes", "app_crash_after_tokens",
        "drop_transport_after_answers", "drop_transport_after_bytes", "max_apps", "max_processes",
        "app_memory_bytes"}
_STR_MAP = {"props_override"}


def _coerce(key: str, value: Any, where: str) -> Any:
    """Turn CLI strings / JSON values into the field's type, with a one-line error naming key and value."""
    if key not in _FIELDS:
        raise FaultsError(f"{where}: unknown fault/option {key!r}; known: {', '.join(sorted(_FIELDS))}")
    if value is None:
        return None
    try:
        if key in _BOOL:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if key in _INT:
            n = int(value)
            if n < 0:
                raise ValueError(value)
            return n
        if key in _STR_MAP:
            d = json.loads(value) if isinstance(value, str) else value
            if not (isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())):
                raise ValueError(value)
            return dict(d)
        return str(value)
    except (ValueError, TypeError):  # json.JSONDecodeError is a ValueError
        raise FaultsError(f"{where}: bad value {value!r} for {key}; fix the value (see pipeline/virtual/faults.py)")\
            from None


def parse_app_cmd(value: Any, where: str = "--app-cmd") -> list[str] | None:
    """The test hook's host argv prefix (a JSON list of strings) — a daemon *start* option, never a fault."""
    if value is None:
        return None
    try:
        cmd = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        cmd = None
    if not (isinstance(cmd, list) and cmd and all(isinstance(x, str) and x for x in cmd)):
        raise FaultsError(f"{where}: bad value {value!r}; give a JSON list of strings, e.g. "
                          '[\"/usr/bin/python3\", \"stub.py\"]')
    return cmd


def split_options(options: dict[str, Any] | None) -> tuple[dict[str, Any], list[str] | None]:
    """(faults, app_cmd): the start-only app command taken out of a dict of virtual device options."""
    faults = dict(options or {})
    return faults, parse_app_cmd(faults.pop("app_cmd", None), "app_cmd")


def make_faults(options: dict[str, Any] | None, where: str = "options") -> Faults:
    """Validate a dict of options into a :class:`Faults`."""
    return Faults(**{k: _coerce(k, v, where) for k, v in (options or {}).items()})


def parse_cli(items: list[str]) -> dict[str, Any]:
    """Parse repeated ``--fault key=value`` (``key`` alone means a true boolean)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key in START_ONLY:
            raise FaultsError(f"--fault {item}: {key} is not a fault; give it at start with --app-cmd JSON")
        out[key] = _coerce(key, value if sep else "1", f"--fault {item}")
    return out


def faults_path(root: Path) -> Path:
    """The control file: host-side, in the 0700 state dir, outside the device storage."""
    return state_dir(root) / "faults.json"


def write_faults(root: Path, **options: Any) -> Path:
    """Atomically replace the control file (the running daemon picks it up on its next operation)."""
    if START_ONLY & options.keys():
        raise FaultsError(f"write_faults: {sorted(START_ONLY & options.keys())} cannot change on a running daemon; "
                          "start a daemon with that option instead (--app-cmd / virtual_options)")
    make_faults(options, "write_faults")  # validate before publishing
    path = faults_path(root)
    state_dir(root, create=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(options, sort_keys=True))
    os.replace(tmp, path)
    return path


class FaultSource:
    """Base options + the control file, re-read only when its mtime/size changes.

    Also the daemon-wide counters of the transport-drop faults (answers and app output bytes seen on shell
    streams), reset whenever the faults change, so each drop fires once per setting."""

    def __init__(self, root: Path, base: dict[str, Any] | None = None,
                 read: Callable[[Path], str] = Path.read_text) -> None:
        self._path = faults_path(root)
        self._read = read  # the daemon passes its host broker's reader: the device domain cannot open state/
        self._base = dict(base or {})
        self._key: tuple[int, int] | None = None
        self._current = make_faults(self._base, "daemon options")
        self._lock = threading.Lock()
        self._answers = self._bytes = 0
        self._fired = False

    def tap(self) -> OutputTap:
        """A per-stream watcher of shell stdout for the drop faults."""
        return OutputTap(self)

    def _app_output(self, nbytes: int, answers_end_at: list[int]) -> int | None:
        """Count ``nbytes`` of app output (answers ending at the given offsets); the offset after which to drop
        the transport, or None."""
        f = self.get()
        with self._lock:
            if self._fired or (f.drop_transport_after_answers is None and f.drop_transport_after_bytes is None):
                return None
            cut: int | None = None
            if f.drop_transport_after_bytes is not None and self._bytes + nbytes >= f.drop_transport_after_bytes:
                cut = max(0, f.drop_transport_after_bytes - self._bytes)
            if f.drop_transport_after_answers is not None:
                k = f.drop_transport_after_answers - self._answers
                if 0 < k <= len(answers_end_at) and (cut is None or answers_end_at[k - 1] < cut):
                    cut = answers_end_at[k - 1]
            self._bytes += nbytes
            self._answers += len(answers_end_at)
            if cut is not None:
                self._fired = True
                log.warning("fault: dropping the transport after %d answers / %d bytes of app output",
                            self._answers, self._bytes)
            return cut

    def get(self) -> Faults:
        try:
            st = self._path.stat()
            key = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key != self._key:
            merged = dict(self._base)
            if key is not None:
                try:
                    data = json.loads(self._read(self._path) or "{}")
                except (OSError, json.JSONDecodeError) as e:
                    raise FaultsError(f"{self._path}: unreadable ({e}); rewrite it as a JSON object") from None
                if not isinstance(data, dict):
                    raise FaultsError(f"{self._path}: must hold a JSON object of fault names to values")
                for key in START_ONLY & data.keys():
                    log.warning("refused: control file %s sets %r=%r; ignored (the app command is fixed when the "
                                "daemon starts)", self._path, key, data.pop(key))
                merged.update(data)
            self._current = make_faults(merged, str(self._path))
            self._key = key
            with self._lock:
                self._answers = self._bytes = 0
                self._fired = False
        return self._current


PROMPT = b">>> "


class OutputTap:
    """Watches one shell stream's stdout: app output starts after the first `>>> ` (the banner's); every later
    `>>> ` ends an answer. `cut(data)` says how many bytes of ``data`` to send before dropping the transport."""

    def __init__(self, source: FaultSource) -> None:
        self._source = source
        self._tail = b""
        self._in_app = False

    def cut(self, data: bytes) -> int | None:
        f = self._source.get()
        if f.drop_transport_after_answers is None and f.drop_transport_after_bytes is None:
            return None
        buf = self._tail + data
        skew = len(self._tail)  # buf[skew:] is data
        ends, i = [], buf.find(PROMPT)
        while i >= 0:
            ends.append(i + len(PROMPT) - skew)  # where the prompt ends, as an offset in data (≥ 1)
            i = buf.find(PROMPT, i + len(PROMPT))
        self._tail = buf[-(len(PROMPT) - 1):]
        start = 0
        if not self._in_app:
            if not ends:
                return None
            self._in_app, start = True, ends.pop(0)
        cut = self._source._app_output(len(data) - start, [e - start for e in ends])
        return None if cut is None else start + cut
