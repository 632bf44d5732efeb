"""Options and injectable faults of the virtual device.

Options come from two layers: the ones given when the daemon starts (CLI ``--fault key=value``) and a JSON control
file ``<root>/.odeval/faults.json`` that is re-read (cheaply, by mtime) before every operation.  The file layer
exists so that tests can change faults on a *running* daemon without restarting it (a restart would make the adb
server see the device go offline).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

GIB = 1 << 30


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
    standin_model: str | None = None  # host HF model dir used instead of a MobileQuant QNN dir
    app_cmd: list[str] | None = field(default=None)  # test hook: host argv prefix replacing the reference app

    def app_env(self) -> dict[str, str]:
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
_INT = {"drop_push_after_bytes", "bandwidth_bytes_per_s", "capacity_bytes", "app_crash_after_tokens"}


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
        if key == "app_cmd":
            cmd = json.loads(value) if isinstance(value, str) else value
            if not (isinstance(cmd, list) and cmd and all(isinstance(x, str) for x in cmd)):
                raise ValueError(value)
            return cmd
        return str(value)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise FaultsError(f"{where}: bad value {value!r} for {key}; fix the value (see pipeline/virtual/faults.py)")\
            from None


def make_faults(options: dict[str, Any] | None, where: str = "options") -> Faults:
    """Validate a dict of options into a :class:`Faults`."""
    return Faults(**{k: _coerce(k, v, where) for k, v in (options or {}).items()})


def parse_cli(items: list[str]) -> dict[str, Any]:
    """Parse repeated ``--fault key=value`` (``key`` alone means a true boolean)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        out[key] = _coerce(key, value if sep else "1", f"--fault {item}")
    return out


def faults_path(root: Path) -> Path:
    return Path(root) / ".odeval" / "faults.json"


def write_faults(root: Path, **options: Any) -> Path:
    """Atomically replace the control file (the running daemon picks it up on its next operation)."""
    make_faults(options, "write_faults")  # validate before publishing
    path = faults_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(options, sort_keys=True))
    os.replace(tmp, path)
    return path


class FaultSource:
    """Base options + the control file, re-read only when its mtime/size changes."""

    def __init__(self, root: Path, base: dict[str, Any] | None = None) -> None:
        self._path = faults_path(root)
        self._base = dict(base or {})
        self._key: tuple[int, int] | None = None
        self._current = make_faults(self._base, "daemon options")

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
                    data = json.loads(self._path.read_text() or "{}")
                except (OSError, json.JSONDecodeError) as e:
                    raise FaultsError(f"{self._path}: unreadable ({e}); rewrite it as a JSON object") from None
                if not isinstance(data, dict):
                    raise FaultsError(f"{self._path}: must hold a JSON object of fault names to values")
                merged.update(data)
            self._current = make_faults(merged, str(self._path))
            self._key = key
        return self._current
