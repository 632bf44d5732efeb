"""The device the push and run stages share: the config's device section opened, errors as one-line StageErrors."""

from __future__ import annotations

from typing import Any

from pipeline.config import Config
from pipeline.device.select import DeviceError, PoolError, open_device
from pipeline.stages import StageError


def open_stage_device(cfg: Config, job: str, *, pin: str | None = None, prefer: str | None = None) -> Any:
    """See :func:`pipeline.device.select.open_device`; ``pin`` = the serial the files were pushed to (run)."""
    try:
        return open_device(cfg.device, job=job, virtual_only=cfg.app.virtual_only, pin=pin, prefer=prefer)
    except (DeviceError, PoolError) as e:
        raise StageError(str(e)) from None
