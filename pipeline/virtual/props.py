"""What the virtual device says about itself (getprop, the CNXN banner) and the shell's default environment.

A module of its own so that both the ADB protocol (:mod:`pipeline.virtual.adbd`, banner) and the shell read it
without importing each other.  Nothing here names a host path.
"""

from __future__ import annotations

import platform

_ABI = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64-v8a", "arm64": "arm64-v8a",
        "armv7l": "armeabi-v7a", "i686": "x86", "i386": "x86"}
HOST_ARCH = platform.machine().lower() or "unknown"
VIRTUAL_PROPS = {
    "ro.product.model": "odeval-virtual",
    "ro.product.name": "odeval_virtual",
    "ro.product.device": "odeval_virtual",
    "ro.product.brand": "odeval",
    "ro.product.manufacturer": "odeval",
    "ro.soc.model": "virtual-host-cpu",
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
