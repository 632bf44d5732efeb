"""Which SoC a device has, from its properties: one place for the names and the fallback.

``ro.soc.model`` (Android 12+, e.g. ``SM8650``) else ``ro.board.platform`` (e.g. ``pineapple``/``kalama``); the
chip names (``8gen3``…) are the ones conf/ uses (``model.chip``, ``app.device_arg``, the bandwidth table).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Snapdragon model numbers and board platforms → the chip names conf/ uses
SOC_ALIASES = {"SM8750": "8elite", "SUN": "8elite", "SM8650": "8gen3", "PINEAPPLE": "8gen3", "SM8550": "8gen2",
               "KALAMA": "8gen2", "SM8475": "8gen1", "SM8450": "8gen1", "TARO": "8gen1"}
VIRTUAL_SOC = "virtual-host-cpu"  # what the virtual device reports (pipeline/virtual/props.py): any model, host CPU
VIRTUAL_CHIP = VIRTUAL_SOC.lower()


def soc_of(props: Mapping[str, Any] | None) -> str | None:
    """The SoC property as reported (``ro.soc.model``, else ``ro.board.platform``), or None."""
    props = props or {}
    return str(props.get("ro.soc.model") or props.get("ro.board.platform") or "") or None


def chip_of(props: Mapping[str, Any] | None) -> str | None:
    """The chip name conf/ uses (``8gen3``…), or the SoC name lower-cased when it is not a known alias."""
    soc = soc_of(props)
    return None if soc is None else SOC_ALIASES.get(soc.upper(), soc.lower())
