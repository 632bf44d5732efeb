"""The config.json key that asks for emulated activation quantisation (``odeval_activation_quant``), and its parser.

A module of its own because two floors need it: the converter writes the key (``pipeline/models/gguf_model.py``,
the ``gguf-a8`` variant) and the guest engine reads it (``pipeline/guest/npllama.py``); neither imports the other
for it.
"""

from __future__ import annotations

from typing import Any

ACT_QUANT_KEY = "odeval_activation_quant"  # config.json: activation fake-quantisation (pipeline/guest/npllama.py)
ACT_QUANT_SCHEMES = ("dynamic-symmetric-per-token",)


class ActQuantError(ValueError):
    """A malformed ``odeval_activation_quant`` (the message names the key, the value and the fix)."""


def parse_act_quant(cfg: dict[str, Any]) -> int | None:
    """Bits of config.json's ``odeval_activation_quant`` (None when absent or null: float activations)."""
    aq = cfg.get(ACT_QUANT_KEY)
    if aq is None:
        return None
    where = f"config.json {ACT_QUANT_KEY}"
    if not isinstance(aq, dict) or set(aq) != {"bits", "scheme"}:
        raise ActQuantError(f"{where}={aq!r}: must be an object with exactly the keys 'bits' and 'scheme' "
                            "(e.g. {\"bits\": 8, \"scheme\": \"dynamic-symmetric-per-token\"}); re-fetch the model")
    bits = aq["bits"]
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ActQuantError(f"{where}.bits={bits!r}: must be an integer from 2 to 8")
    if aq["scheme"] not in ACT_QUANT_SCHEMES:
        raise ActQuantError(f"{where}.scheme={aq['scheme']!r} is unknown: the numpy engine emulates only "
                            f"{', '.join(ACT_QUANT_SCHEMES)}")
    return bits
