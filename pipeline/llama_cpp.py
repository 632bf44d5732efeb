"""Where this machine's build of llama.cpp lives (the virtual device's second runtime): its pin, its key and the
lookup — never a build (that is :mod:`pipeline.fetch.llama_build`).

WHY a pinned PyPI source: no PyPI wheel ships a llama.cpp CLI that runs on an arbitrary x86-64 host and Debian has
no package, but the ``llama-cpp-python`` sdist vendors one pinned llama.cpp tree (``vendor/llama.cpp``). Its
sha256 is pinned here, so the bytes built are the bytes named.

WHY a cache keyed by inputs (like :mod:`pipeline.native_kernel`): the binaries are built for *this* CPU
(``GGML_NATIVE``), so the key is the source, the CMake flags, the targets, the compilers and the CPU's feature flags;
the directory ``$ODEVAL_CACHE/llama.cpp/<digest>`` holds ``llama-completion``, ``llama-bench`` and ``build.json``.

WHY on this floor: the fetch stage builds and copies it into the app dir it pushes, and the virtual device's daemon
*registers* it — host side, from this lookup alone (:func:`registered`): a pushed file runs on the host only when
its bytes' sha256 equals the registered build's, and then the daemon runs its own copy, never the pushed file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pipeline.native_kernel import compiler, compiler_identity, cpu_flags
from pipeline.workspace import cache_home

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"  # the sdist's vendor/llama.cpp is the llama.cpp this project runs
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF")
COMPLETION = "llama-completion"  # the per-prompt CLI (pipeline/apps/llama_cpp.py says why this one)
BENCH = "llama-bench"  # runtime=bench
BINARIES = (COMPLETION, BENCH)
BUILD_VERSION = "1"
BUILD_HINT = "run `python -m pipeline.fetch.llama_build` (or the fetch stage with app=llama-cpp)"


def cache_dir() -> Path:
    """``$ODEVAL_CACHE/llama.cpp`` (:func:`pipeline.workspace.cache_home`)."""
    return cache_home() / "llama.cpp"


def cxx_compiler() -> str | None:
    """``$CXX`` else ``c++``/``g++`` on PATH, or None."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx)
    return shutil.which("c++") or shutil.which("g++")


def build_key() -> dict[str, Any]:
    """Everything the built bytes depend on (the directory name is its digest); raises OSError without compilers."""
    cc, cxx = compiler(), cxx_compiler()
    if cc is None or cxx is None:
        raise OSError("no C/C++ compiler (cc and c++, or $CC/$CXX) on PATH: llama.cpp cannot be built here")
    return {"build_version": BUILD_VERSION, "package": PACKAGE, "version": VERSION, "sdist_sha256": SDIST_SHA256,
            "cmake_flags": list(CMAKE_FLAGS), "targets": list(BINARIES), "cc": compiler_identity(cc),
            "cxx": compiler_identity(cxx),
            "cpu_flags_sha256": hashlib.sha256(cpu_flags().encode()).hexdigest()}


def key_dir(key: dict[str, Any]) -> Path:
    """``$ODEVAL_CACHE/llama.cpp/build-<digest16>``: where the build with ``key`` lives."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir() / f"build-{digest[:16]}"


def find() -> tuple[Path | None, str]:
    """(the build dir for this machine, "") or (None, why not): a lookup, never a build."""
    try:
        d = key_dir(build_key())
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    if all((d / b).is_file() for b in BINARIES) and (d / "build.json").is_file():
        return d, ""
    return None, f"llama.cpp {VERSION} is not built for this machine ({d}); {BUILD_HINT}"


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised by (path, size, mtime): the daemon checks the registered build on every stream."""
    st = os.stat(path)
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def registered(build_dir: Path) -> dict[str, tuple[Path, str]]:
    """What the virtual device may run on the host: file name → (the build's own binary, its sha256); empty when
    llama.cpp is not built here. ``build_dir``: the key dir the daemon computed at start (the compilers' identity
    takes subprocesses; the per-stream check is then two stats). Host-side only: nothing the device can write
    takes part in this lookup."""
    if not all((build_dir / b).is_file() for b in BINARIES):
        return {}
    return {b: (build_dir / b, file_sha256(build_dir / b)) for b in BINARIES}
