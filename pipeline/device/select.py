"""Open the device a ``DeviceConfig`` names: a phone, the virtual device (started on demand) or a pool lease.

One place turns the device section of the config into an adbutils device, for the push and run stages and for
tools; the pool logic (which phone, leases) lives in :mod:`pipeline.device.pool`.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import DeviceConfig
from pipeline.device.connect import DeviceError, get_device
from pipeline.device.pool import PoolError, hold, hold_single


def virtual_options(d: DeviceConfig) -> dict[str, Any]:
    """The virtual device's daemon options from the config (its faults included)."""
    from pipeline.workspace import resolve, shared_root

    v = d.virtual
    return dict(capacity_bytes=int(v.capacity_gb * 2**30), simulate_thermal=v.simulate_thermal,
                standin_model=v.standin_model, auth=v.auth, sandbox=v.sandbox,
                adb_keys=str(resolve(v.adb_keys, shared_root())) if v.adb_keys else None, **dict(v.faults))


def open_device(d: DeviceConfig, *, job: str, virtual_only: bool = False, pin: str | None = None,
                prefer: str | None = None) -> Any:
    """The adbutils device ``d`` names, connected and ready.

    ``device.kind=pool`` (a DVC stage process; Hydra jobs lease for the whole job and pass a concrete device):
    lease a pool device until this process exits — ``pin`` (a serial) when the files are already on one device.
    ``virtual``/``adb``: the one device is held the same way (one device, one run; a second run waits, saying
    which run holds it), unless this process already holds it.
    Raises :class:`DeviceError` / :class:`PoolError` with a one-line, actionable message.
    """
    from pipeline.workspace import resolve, shared_root

    if d.kind == "pool":
        d = hold(d, job, virtual_only, pin=pin, prefer=prefer)
    elif d.kind == "virtual":  # before the daemon is started or its faults/auth change: never under another run
        hold_single(d, job)
    options = virtual_options(d) if d.kind == "virtual" else None
    dev = get_device(d.kind, serial=d.serial, adb_host=d.adb_host, adb_port=d.adb_port, connect_addr=d.connect,
                     virtual_root=resolve(d.virtual.root, shared_root()), virtual_port=d.virtual.port,
                     virtual_options=options)
    if d.kind == "adb":  # a phone is known by its serial only once connected (connecting changes nothing on it)
        hold_single(d, job, serial=dev.serial)
    return dev


__all__ = ["DeviceError", "PoolError", "open_device", "virtual_options"]
