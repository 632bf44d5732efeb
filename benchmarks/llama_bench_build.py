"""Build llama.cpp's ``llama-bench`` from the PyPI sdist of llama-cpp-python into a cache OUTSIDE the repo.

WHY: ``benchmarks/engine_speed.py`` compares the reference app's engine with llama.cpp on the same GGUF, and no
PyPI wheel ships a llama.cpp CLI that runs here (DESIGN §10). The llama-cpp-python sdist vendors a pinned llama.cpp
(``vendor/llama.cpp``); this script downloads it with pip (``--no-binary``, no dependencies), configures it with
cmake + ninja (``-DGGML_NATIVE=ON``: built for this CPU, like the reference app's kernel) and builds the one target
(~5.5 min on 2 cores). Nothing of llama.cpp is ever written into the repository.

    python benchmarks/llama_bench_build.py            # prints the binary's path (builds once)
    python benchmarks/llama_bench_build.py --print    # the path if built, else exit 1

Output: ``$ODEVAL_CACHE/llama.cpp/llama-cpp-python-<version>/llama-bench`` (+ ``build.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
VERSION = "0.3.36"  # llama-cpp-python sdist (vendors llama.cpp); pinned so the comparison is reproducible
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF")


def out_dir(version: str = VERSION) -> Path:
    from pipeline.workspace import cache_home

    return cache_home() / "llama.cpp" / f"llama-cpp-python-{version}"


def binary(version: str = VERSION) -> Path | None:
    """The built llama-bench, or None."""
    b = out_dir(version) / "llama-bench"
    return b if b.is_file() and os.access(b, os.X_OK) else None


def build(version: str = VERSION, jobs: int = 2) -> Path:
    """Download the sdist, build llama-bench, install it into :func:`out_dir`; returns its path."""
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: `apt-get install cmake ninja-build` or `pip install cmake ninja`")
    dest = out_dir(version)
    work = dest.parent / f".build-{version}"  # kept until the binary is installed: a failed step resumes
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    src = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"), None)
    if src is None:
        print(f"[1/3] pip download llama-cpp-python=={version} (sdist, no deps)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(work)], check=True)
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tf:
            tf.extractall(work, filter="data")
        src = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    build_dir = work / "build"
    print(f"[2/3] cmake configure {src.relative_to(work)}", flush=True)
    subprocess.run(["cmake", "-S", str(src), "-B", str(build_dir), "-G", "Ninja", *CMAKE_FLAGS], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"[3/3] cmake --build (target llama-bench, -j{jobs}; ninja prints [step/total])", flush=True)
    subprocess.run(["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", "llama-bench"], check=True)
    built = next(p for p in build_dir.rglob("llama-bench") if p.is_file() and os.access(p, os.X_OK))
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, dest / "llama-bench")
    (dest / "build.json").write_text(json.dumps({
        "package": "llama-cpp-python", "version": version, "cmake_flags": list(CMAKE_FLAGS),
        "build_s": round(time.monotonic() - t0, 1), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return dest / "llama-bench"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default=VERSION)
    ap.add_argument("--print", action="store_true", help="print the path if built, else exit 1 (never builds)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    b = binary(args.version)
    if args.print:
        if b is None:
            return 1
        print(b)
        return 0
    print(b or build(args.version, args.jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
