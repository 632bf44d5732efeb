"""Where this machine's build of the reference app's native kernel (``pipeline/guest/qkernel.c``) lives: its key
and the lookup — never a build (that is :mod:`pipeline.guest.native_build`).

WHY a cache keyed by inputs, not a build into the package: the library is compiled for *this* CPU
(``-march=native``), so its key is the source, the flags, the compiler's identity and the CPU's feature flags — a
new compiler, CPU or source builds a new one beside the old in ``$ODEVAL_CACHE/native``, and every checkout of the
machine shares it.

WHY on this floor: three rooms ask the same question — the build (``guest/native_build.py``), the confined app
(``guest/qkernel.py``, through :func:`library_for_app`) and the virtual device's daemon, which looks the kernel up
at each app start (:func:`find`, in its unconfined broker: the key needs the compiler's ``--version``), grants the
app read+execute on that one directory and passes its path in ``ODEVAL_QKERNEL`` — and the daemon never imports
the guest programs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pipeline.workspace import cache_home

SOURCE = Path(__file__).resolve().parent / "guest" / "qkernel.c"
LIB_NAME = "libqkernel.so"
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-std=c11", "-shared", "-fPIC")
OPENMP_FLAG = "-fopenmp"
ENV_LIB = "ODEVAL_QKERNEL"  # set by the virtual device's launcher: the library the confined app may load
BUILD_VERSION = "1"
NO_COMPILER = "no C compiler (cc/gcc, or $CC) on PATH: the numpy engine runs instead"
BUILD_HINT = "run `make install` or `python -m pipeline.guest.native_build`"


def cache_dir() -> Path:
    """``$ODEVAL_CACHE/native`` (:func:`pipeline.workspace.cache_home`)."""
    return cache_home() / "native"


def compiler() -> str | None:
    """``$CC`` else ``cc``/``gcc`` on PATH, or None."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return shutil.which("cc") or shutil.which("gcc")


def cpu_flags() -> str:
    """The CPU's feature flags (``-march=native`` depends on them)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=4)
def compiler_identity(cc: str) -> str:
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    machine = subprocess.run([cc, "-dumpmachine"], capture_output=True, text=True, timeout=30)
    return (out.stdout.splitlines() or ["?"])[0] + " " + machine.stdout.strip()


def build_key(cc: str, source: Path | None = None) -> dict[str, Any]:
    """Everything the built bytes depend on (the directory name is its digest)."""
    src = source or SOURCE
    return {"build_version": BUILD_VERSION, "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
            "flags": [*FLAGS, OPENMP_FLAG], "compiler": compiler_identity(cc), "machine": platform.machine(),
            "cpu_flags_sha256": hashlib.sha256(cpu_flags().encode()).hexdigest()}


def key_dir(key: dict[str, Any]) -> Path:
    """``$ODEVAL_CACHE/native/qkernel-<digest16>``: where the build with ``key`` lives."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir() / f"qkernel-{digest[:16]}"


def find(source: Path | None = None) -> tuple[Path | None, str]:
    """(the built library for this machine, "") or (None, why not): a lookup, never a build."""
    cc = compiler()
    if cc is None:
        return None, NO_COMPILER
    try:
        lib = key_dir(build_key(cc, source)) / LIB_NAME
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot identify the compiler {cc} ({exc})"
    if lib.is_file():
        return lib, ""
    return None, f"the kernel is not built for this machine ({lib.parent}); {BUILD_HINT}"


def library_for_app() -> tuple[Path | None, str]:
    """The library the app loads: ``$ODEVAL_QKERNEL`` when the virtual device set it (the confined app cannot run
    the compiler to compute the key), else :func:`find`."""
    env = os.environ.get("ODEVAL_QKERNEL")
    if env is not None:
        if env.startswith("unavailable:"):
            return None, env.removeprefix("unavailable:").strip()
        return (Path(env), "") if Path(env).is_file() else (None, f"{ENV_LIB}={env} does not exist")
    return find()
