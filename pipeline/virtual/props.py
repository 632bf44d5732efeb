"""What the virtual device says about itself (getprop, the CNXN banner) and the shell's default environment.

A module of its own so that both the ADB protocol (:mod:`pipeline.virtual.adbd`, banner) and the shell read it
without importing each other.  Nothing here names a host path.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping

from pipeline.socs import VIRTUAL_SOC

_ABI = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64-v8a", "arm64": "arm64-v8a",
        "armv7l": "armeabi-v7a", "i686": "x86", "i386": "x86"}
HOST_ARCH = platform.machine().lower() or "unknown"
VIRTUAL_PROPS = {
    "ro.product.model": "odeval-virtual",
    "ro.product.name": "odeval_virtual",
    "ro.product.device": "odeval_virtual",
    "ro.product.brand": "odeval",
    "ro.product.manufacturer": "odeval",
    "ro.soc.model": VIRTUAL_SOC,
    "ro.soc.manufacturer": "odeval",
    "ro.board.platform": "virtual",
    "ro.product.cpu.abi": _ABI.get(HOST_ARCH, HOST_ARCH),
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.build.fingerprint": "odeval/odeval_virtual/odeval_virtual:14/ODEVAL.1/1:user/release-keys",
    "ro.odeval.virtual": "1",
    "ro.serialno": "odeval-virtual",
}
DEVICE_ENV = {"PATH": "/product/bin:/apex/com.android.runtime/bin:/system/bin:/system/xbin:/odm/bin:/vendor/bin",
              "HOME": "/", "TMPDIR": "/data/local/tmp", "USER": "shell", "SHELL": "/system/bin/sh"}
# Never overridable: the device must always be recognisable as virtual (results say "not a phone measurement").
FIXED_PROPS = frozenset({"ro.odeval.virtual", "ro.odeval.sandbox"})
SANDBOX_PROP = "ro.odeval.sandbox"  # how the device side is confined: landlock-abi<N>, or "off" (the user opted out)


def current_props(override: Mapping[str, str] | None = None, sandbox: str = "off") -> dict[str, str]:
    """What getprop reports: the defaults with the host-side ``props_override`` option applied (a fake phone for
    tests of the run stage's chip check). The option comes only from the daemon's start options or its host-side
    control file (pipeline/virtual/faults.py), never from anything the device side can write."""
    return {**VIRTUAL_PROPS, **{k: v for k, v in (override or {}).items() if k not in FIXED_PROPS},
            SANDBOX_PROP: sandbox}
