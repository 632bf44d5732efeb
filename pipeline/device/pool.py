"""A pool of phones (or virtual devices) that parallel jobs lease one at a time.

Why leases and not a scheduler: Hydra's launchers (joblib, Ray) already run jobs in parallel and ADB's
client/server split already reaches phones on other hosts (``adb -H host -P port``). The one thing missing is
"no two jobs on one phone at once": each job takes an exclusive, non-blocking ``flock`` on a lock file per device
under ``<shared_root>/.odeval/locks/``. flock belongs to the open file description, so the kernel drops it when the
process dies — a crash, ``kill -9`` or Ctrl-C can never leave a device leased. We refuse filelock's "soft"
fallback (a marker file) on filesystems without flock, because a marker is *not* released by a dying process.

Locks are per host: flock over NFS is emulated (or silently local) and not trustworthy, so jobs on several hosts
must not share a lock dir on a network filesystem. Recommended: one pool per host (each host leases the phones
its own adb server sees, every host runs its own sweep share); docs/sweeps.md "Many phones" has the trade-offs.

Every lease appends to ``<lock_dir>/leases.jsonl`` (an ``acquire`` and a ``release`` record: job, device, serial,
t_acquire, t_release, pid, host): the audit that each device ran at most one job at a time. A job killed while
leasing leaves an ``acquire`` without ``release``; the next holder of that device logs an ``abandoned`` record.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.config import DeviceConfig, PoolDevice
from pipeline.locks import append_record, holder, lock_dir_for, safe_key, virtual_key

log = logging.getLogger(__name__)


POLL_S = 0.1  # a waiting job re-tries the lock files (cheap); 0.5 s left a freed device idle up to 0.5 s


REMOTE_SERVER_TIMEOUT_S = 3.0


_HELD: dict[str, tuple[PoolDevice, ExitStack]] = {}  # leases a DVC stage process holds until it exits


_ACTIVE: dict[str, PoolDevice] = {}  # leases an enclosing `leased_device` block of this process holds


_SCOPES: list[list[str]] = []  # open device_scope blocks: the keys each will release


_ATEXIT: list[Any] = []


class PoolError(Exception):
    """No device of the pool can be leased; the message names the labels/devices involved and what to do."""


def serial_of(dev: PoolDevice) -> str:
    """The serial its adb server knows the device by: the serial, the ``connect`` address, or the virtual port."""
    if dev.kind == "virtual":
        return f"127.0.0.1:{dev.virtual_port}"
    if dev.serial or dev.connect:
        return str(dev.serial or dev.connect)
    raise PoolError(f"device.pool[{dev.name}]: kind=adb needs serial (or connect) — a pool cannot pick "
                    "'the single attached device'; list serials from `adb devices`")


def device_key(dev: PoolDevice) -> str:
    """Lock-file name = the device's address, so two configs naming the same device differently (a pool entry,
    ``device=virtual``, ``device=adb``) still exclude each other: a phone by adb server + serial, a virtual device
    by its daemon's port (any adb server reaches the same daemon)."""
    from pipeline.device.adb import adb_server_port

    if dev.kind == "virtual":
        return virtual_key(dev.virtual_port)
    port = dev.adb_port or adb_server_port()
    return safe_key(f"{dev.adb_host}_{port}_{serial_of(dev)}")


def _check_pool(pool: list[PoolDevice]) -> None:
    names = [d.name for d in pool]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PoolError(f"device.pool: names {dupes} appear more than once — give every device a unique name")
    for d in pool:
        if d.kind not in ("adb", "virtual"):
            raise PoolError(f"device.pool[{d.name}].kind={d.kind!r}: must be 'adb' or 'virtual'")
        if d.kind == "virtual" and not d.virtual_port:
            raise PoolError(f"device.pool[{d.name}]: kind=virtual needs virtual_port (and virtual_root) — give "
                            "every virtual device its own port and root")
        serial_of(d)


def _labels(d: PoolDevice) -> str:
    inner = ",".join(f"{k}={v}" for k, v in sorted(d.labels.items()))
    return f"{d.name}{{{inner}}}"


def select(pool: list[PoolDevice], require: dict[str, Any], kinds: tuple[str, ...] | None = None) -> list[PoolDevice]:
    """The pool devices carrying every required label (and of an allowed kind); fails fast if there are none —
    waiting an hour for a device that cannot exist helps nobody."""
    _check_pool(pool)
    if not pool:
        raise PoolError("device.pool is empty: list devices in conf/device/pool.yaml")
    wanted = {str(k): str(v) for k, v in (require or {}).items()}
    found = [d for d in pool if all(str(d.labels.get(k)) == v for k, v in wanted.items())]
    if not found:
        missing = [f"{k}={v}" for k, v in wanted.items() if not any(str(d.labels.get(k)) == v for d in pool)]
        what = ", ".join(missing) or ", ".join(f"{k}={v}" for k, v in wanted.items())
        raise PoolError(f"device.require: no pool device has {what} (pool labels: "
                        f"{'; '.join(_labels(d) for d in pool)}) — add such a device to the pool or change "
                        "device.require / the app")
    if kinds is not None:
        of_kind = [d for d in found if d.kind in kinds]
        if not of_kind:
            raise PoolError(f"no pool device of kind {'/'.join(kinds)} matches device.require={wanted} (matching: "
                            f"{', '.join(f'{d.name} ({d.kind})' for d in found)}) — this app runs only on "
                            f"{'/'.join(kinds)} devices; add one to the pool or pick another app")
        found = of_kind
    return found


def probe(dev: PoolDevice, root: Path | None = None) -> str | None:
    """None if the device can take a job now, else why not (one line). A virtual device is started on demand."""
    from pipeline.device.adb import AdbToolError, adb_server_port, run_adb
    from pipeline.workspace import resolve, shared_root

    if dev.kind == "virtual":
        from pipeline.virtual import VirtualDeviceError, ensure_running

        vroot = resolve(dev.virtual_root or f".odeval/pool/{dev.name}", root or shared_root())
        try:
            ensure_running(vroot, int(dev.virtual_port or 0))
        except VirtualDeviceError as e:
            return f"virtual device did not start: {e}"
        return None
    port = dev.adb_port or adb_server_port()
    if dev.adb_host not in ("127.0.0.1", "localhost", "::1"):
        try:
            socket.create_connection((dev.adb_host, port), timeout=REMOTE_SERVER_TIMEOUT_S).close()
        except OSError as e:
            return f"adb server {dev.adb_host}:{port} unreachable ({e})"
    serial = serial_of(dev)
    try:
        state = _get_state(run_adb, serial, dev.adb_host, port)
        if state != "device" and dev.connect:
            run_adb(["connect", dev.connect], host=dev.adb_host, port=port, timeout=20)
            state = _get_state(run_adb, serial, dev.adb_host, port)
    except AdbToolError as e:
        return str(e)
    return None if state == "device" else f"adb get-state: {state}"


def _get_state(run_adb: Any, serial: str, host: str, port: int) -> str:
    proc = run_adb(["-s", serial, "get-state"], host=host, port=port, timeout=15)
    out = (proc.stdout or b"").decode(errors="replace").strip()
    if proc.returncode == 0 and out:
        return out.splitlines()[-1]
    err = (proc.stderr or proc.stdout or b"").decode(errors="replace").strip().splitlines()
    return err[-1] if err else f"exit {proc.returncode}"


@dataclass
class _Held:
    dev: PoolDevice
    lock: Any
    holder: Path


def _try_lock(dev: PoolDevice, lock_dir: Path) -> _Held | None:
    from filelock import Timeout, UnixFileLock

    key = device_key(dev)
    # fallback_to_soft=False: a marker-file lock would survive a killed job; better to fail loudly on such a fs
    lock = UnixFileLock(str(lock_dir / f"{key}.lock"), timeout=0, thread_local=False, fallback_to_soft=False)
    try:
        lock.acquire()
    except Timeout:
        return None
    except OSError as e:
        raise PoolError(f"{lock_dir}: cannot flock ({e}) — put device.pool locks on a local filesystem "
                        "(not NFS/SMB), e.g. set ODEVAL_ROOT to a local dir") from None
    return _Held(dev, lock, lock_dir / f"{key}.holder.json")


# how a busy device is named: in the error when the wait ends, and in the line a waiting run prints
BUSY = "{name} (job {job}, pid {pid}, host {host})"
HELD = "{name} (held by {job}, pid {pid} on {host})"


def _holders_text(devs: list[PoolDevice], lock_dir: Path, fmt: str) -> str:
    """``fmt`` per busy device, filled from its holder file (``?`` for what it does not say): who holds what."""
    parts = []
    for d in devs:
        h = holder(lock_dir / f"{device_key(d)}.holder.json") or {}
        parts.append(fmt.format(name=d.name, job=h.get("job", "?"), pid=h.get("pid", "?"), host=h.get("host", "?")))
    return ", ".join(parts)


def _order(devs: list[PoolDevice], pin: str | None, prefer: str | None, require: dict) -> list[PoolDevice]:
    if pin is not None:
        pinned = [d for d in devs if serial_of(d) == pin or d.name == pin]
        if not pinned:
            raise PoolError(f"device {pin!r} (the one the files were pushed to) is not in the pool matching "
                            f"device.require={dict(require)} — re-run the push stage")
        return pinned
    if prefer is not None:
        return sorted(devs, key=lambda d: serial_of(d) != prefer and d.name != prefer)
    return list(devs)


@contextmanager
def lease(pool: list[PoolDevice], require: dict[str, Any], lock_dir: Path, timeout_s: float, job: str, *,
          kinds: tuple[str, ...] | None = None, pin: str | None = None, prefer: str | None = None,
          root: Path | None = None, poll_s: float = POLL_S, probe_devices: bool = True) -> Iterator[PoolDevice]:
    """Lease one free, online pool device carrying the ``require`` labels for the duration of the block.

    Devices are tried in pool order (``prefer`` first; only ``pin`` when given); offline/absent ones are skipped
    with a warning (``probe_devices=False``: not probed — the caller connects and reports); when every usable one
    is busy, one line on stderr names the holders and the lease polls until ``timeout_s``. Released on exit,
    exception, Ctrl-C — and by the OS if the process is killed.
    """
    candidates = _order(select(pool, require, kinds), pin, prefer, require)
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    warned: set[str] = set()
    said_wait = False
    while True:
        held, busy, offline = _acquire_first(candidates, lock_dir, root if probe_devices else None, warned,
                                             probe_devices)
        if held is not None:
            break
        if busy and not said_wait:
            said_wait = True
            print(f"{job}: waiting for {_holders_text(busy, lock_dir, HELD)}; up to "
                  f"device.lease_timeout_s={timeout_s:g} s", file=sys.stderr)
        if not busy:
            raise PoolError(f"no device of the pool is online (device.require={dict(require)}): "
                            + "; ".join(f"{n}: {why}" for n, why in offline.items())
                            + " — plug them in / start their adb servers, or fix device.pool")
        if time.monotonic() >= deadline:
            raise PoolError(f"job {job}: no free device within device.lease_timeout_s={timeout_s:g}; busy: "
                            f"{_holders_text(busy, lock_dir, BUSY)}"
                            + (f"; offline: {', '.join(offline)}" if offline else "")
                            + " — raise device.lease_timeout_s or run fewer jobs at once (hydra.launcher.n_jobs)")
        time.sleep(poll_s)
    dev = held.dev
    t_acquire = time.time()
    base = {"job": job, "device": dev.name, "serial": serial_of(dev), "pid": os.getpid(),
            "host": socket.gethostname(), "t_acquire": t_acquire}
    stale = holder(held.holder)
    if stale is not None:  # its holder died without releasing: the OS freed the lock, we record it
        log.warning("pool: %s was leased by job %s (pid %s) which ended without releasing it (killed?); the OS "
                    "released its lock", dev.name, stale.get("job"), stale.get("pid"))
        append_record(lock_dir, {**stale, "event": "abandoned", "t_noticed": t_acquire})
    held.holder.write_text(json.dumps(base))
    append_record(lock_dir, {**base, "event": "acquire"})
    try:
        yield dev
    finally:
        append_record(lock_dir, {**base, "event": "release", "t_release": time.time()})
        held.holder.unlink(missing_ok=True)
        held.lock.release()


def _acquire_first(candidates: list[PoolDevice], lock_dir: Path, root: Path | None, warned: set[str],
                   probe_devices: bool = True) -> tuple[_Held | None, list[PoolDevice], dict[str, str]]:
    """One pass over the candidates: the first lockable online device, else (None, busy ones, offline ones)."""
    busy: list[PoolDevice] = []
    offline: dict[str, str] = {}
    for dev in candidates:
        held = _try_lock(dev, lock_dir)
        if held is None:
            busy.append(dev)
            continue
        why = probe(dev, root) if probe_devices else None
        if why is None:
            return held, busy, offline
        held.lock.release()
        offline[dev.name] = why
        if dev.name not in warned:
            warned.add(dev.name)
            log.warning("pool: skipping %s (%s @ %s:%s): %s", dev.name, serial_of(dev), dev.adb_host,
                        dev.adb_port or "default", why)
    return None, busy, offline


def concrete_device(device: DeviceConfig, leased: PoolDevice, root: Path | None = None) -> DeviceConfig:
    """The leased device as an ordinary ``device=virtual|adb`` config (what stages know how to use). The pool
    list is dropped so that growing the pool does not change every run's config hash (resume keys)."""
    from pipeline.workspace import resolve, shared_root

    common = dict(kind=leased.kind, adb_host=leased.adb_host, adb_port=leased.adb_port, pool=[])
    if leased.kind == "virtual":
        vroot = resolve(leased.virtual_root or f".odeval/pool/{leased.name}", root or shared_root())
        virtual = replace(device.virtual, root=str(vroot), port=int(leased.virtual_port or 0))
        return replace(device, serial=serial_of(leased), connect=None, virtual=virtual, **common)
    return replace(device, serial=serial_of(leased), connect=leased.connect, **common)


def _kinds(virtual_only: bool) -> tuple[str, ...] | None:
    return ("virtual",) if virtual_only else None


def check_pool(device: DeviceConfig, virtual_only: bool) -> None:
    """Fail fast (before fetch) when ``device.kind=pool`` and no pool device could ever take this job.

    ``virtual_only``: the app runs only on virtual devices (the reference app)."""
    if device.kind == "pool":
        select(device.pool, device.require, _kinds(virtual_only))


@contextmanager
def leased_device(device: DeviceConfig, job: str, virtual_only: bool, root: Path | None = None
                  ) -> Iterator[DeviceConfig]:
    """For one whole job: a lease on the device and the device config to use — a pool lease made concrete for
    ``device.kind=pool``, else ``device`` itself, held exclusively (one device, one run). Stages opening the
    device inside the block reuse this lease (:func:`hold`, :func:`hold_single`)."""
    from pipeline.workspace import shared_root

    base = root or shared_root()
    if device.kind != "pool":
        serial = _attached_serial(device) if device.kind == "adb" else None
        if device.kind == "adb" and serial is None:  # no device yet: the stage reports it (and holds it then)
            yield device
            return
        dev = single_device(device, serial)
        with lease([dev], {}, lock_dir_for(base), device.lease_timeout_s, job, root=base, probe_devices=False), \
                _registered(dev):
            yield device
        return
    with lease(device.pool, device.require, lock_dir_for(base), device.lease_timeout_s, job,
               kinds=_kinds(virtual_only), root=base) as dev, _registered(dev):
        log.info("pool: job %s leased %s (%s)", job, dev.name, serial_of(dev))
        yield concrete_device(device, dev, base)


@contextmanager
def _registered(dev: PoolDevice) -> Iterator[None]:
    """Record that this process holds ``dev`` for the block (stages then reuse the lease, never self-deadlock)."""
    key = device_key(dev)
    _ACTIVE[key] = dev
    try:
        yield
    finally:
        _ACTIVE.pop(key, None)


def _attached_serial(device: DeviceConfig) -> str | None:
    """The serial of the phone a ``device=adb`` config names (adb's "the single attached device" resolved), or
    None when adb cannot tell (no device, several): then the stage that opens it says why."""
    if device.serial or device.connect:
        return device.serial or device.connect
    from pipeline.device.connect import DeviceError, get_device

    try:
        return get_device("adb", adb_host=device.adb_host, adb_port=device.adb_port).serial
    except DeviceError:
        return None


def single_device(device: DeviceConfig, serial: str | None = None) -> PoolDevice:
    """A ``device=virtual|adb`` config as the pool entry naming the same device (same lock: :func:`device_key`).

    A phone needs its serial (``serial``: the one adb resolved for "the single attached device")."""
    from pipeline.workspace import resolve, shared_root

    if device.kind == "virtual":
        from pipeline.virtual import default_port

        vroot = resolve(device.virtual.root, shared_root())
        port = device.virtual.port or default_port(vroot)
        return PoolDevice(name=f"virtual device 127.0.0.1:{port}", kind="virtual", virtual_root=str(vroot),
                          virtual_port=int(port))
    from pipeline.device.adb import resolve_server

    server = resolve_server(device.adb_host, device.adb_port)
    name = serial or device.serial or device.connect
    if not name:
        raise PoolError("device.serial=None: the device must be connected to know which one to hold")
    return PoolDevice(name=f"device {name}", kind="adb", serial=serial or device.serial, connect=device.connect,
                      adb_host=server.host, adb_port=server.port)


def hold_single(device: DeviceConfig, job: str, serial: str | None = None) -> None:
    """Hold the one device ``device`` names until this process exits (a DVC stage process), unless this process
    already holds it. Taken BEFORE the virtual device is started or its options (faults, auth) are applied, so
    a run never changes a device another run holds: a second run waits, saying which run holds it."""
    from pipeline.workspace import shared_root

    dev = single_device(device, serial)
    key = device_key(dev)
    if key in _ACTIVE or key in _HELD:
        return
    root = shared_root()
    stack = ExitStack()
    stack.enter_context(lease([dev], {}, lock_dir_for(root), device.lease_timeout_s, job, root=root,
                              probe_devices=False))
    _keep(key, dev, stack)


def _keep(key: str, dev: PoolDevice, stack: ExitStack) -> None:
    """Keep a lease: until the innermost :func:`device_scope` ends, else until the process exits."""
    if not _ATEXIT:
        _ATEXIT.append(atexit.register(release_held))
    _HELD[key] = (dev, stack)
    if _SCOPES:
        _SCOPES[-1].append(key)


@contextmanager
def device_scope() -> Iterator[None]:
    """Leases taken by :func:`hold`/:func:`hold_single` inside the block are released at its end.

    WHY: a stage function called in a long-lived process (the Hydra app's sweep, a test, a notebook) must not keep
    the device after it returns — another process's run would wait for the whole session."""
    keys: list[str] = []
    _SCOPES.append(keys)
    try:
        yield
    finally:
        _SCOPES.remove(keys)
        for key in reversed(keys):
            entry = _HELD.pop(key, None)
            if entry is not None:
                entry[1].close()


def hold(device: DeviceConfig, job: str, virtual_only: bool, *, pin: str | None = None,
         prefer: str | None = None) -> DeviceConfig:
    """Lease a pool device until this process exits (a DVC stage process: push and run are separate processes).

    ``pin``: only this serial/name (waiting while it is busy); ``prefer``: try it first. Reuses a lease this
    process already holds when it fits."""
    from pipeline.workspace import shared_root

    root = shared_root()
    held = [dev for dev, _ in _HELD.values()] + list(_ACTIVE.values())
    for dev in held:  # this process already holds a fitting lease (stages called in one process)
        if dev.name in {d.name for d in device.pool} and (pin is None or serial_of(dev) == pin):
            return concrete_device(device, dev, root)
    stack = ExitStack()
    dev = stack.enter_context(lease(device.pool, device.require, lock_dir_for(root), device.lease_timeout_s, job,
                                    kinds=_kinds(virtual_only), pin=pin, prefer=prefer, root=root))
    _keep(device_key(dev), dev, stack)
    print(f"{job}: leased pool device {dev.name} ({serial_of(dev)})", file=sys.stderr)
    return concrete_device(device, dev, root)


def release_held() -> None:
    """Release the leases :func:`hold` took (atexit does this for stage processes)."""
    while _HELD:
        _, (_, stack) = _HELD.popitem()
        stack.close()
