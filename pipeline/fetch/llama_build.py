"""Build the pinned llama.cpp (:mod:`pipeline.llama_cpp`) once per machine into ``$ODEVAL_CACHE/llama.cpp``.

The fetch stage calls :func:`ensure_built` for ``app.source=build`` (``app=llama-cpp`` on the virtual device) and
copies the two binaries into the app dir it records; ``python -m pipeline.fetch.llama_build`` does the same by hand.
Steps: ``pip download`` the sdist (PyPI, no dependencies) and check its pinned sha256; unpack its vendored
``llama.cpp``; CMake + Ninja for the two targets, with a progress bar fed by Ninja's ``[step/total]`` lines (about
3.5–5.5 minutes on 2 cores; once per machine: a second fetch finds the build by its key and builds nothing). The work
dir is kept on failure so a retry resumes the compile; the finished build appears atomically (temp dir + rename),
under a file lock, so two fetches never build twice or see half a build.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from pipeline import llama_cpp as lc

EXPECTED = "3.5–5.5 min on 2 cores"  # measured cold builds (docs/llama-cpp.md)
_STEP = re.compile(r"^\[(\d+)/(\d+)\]")


class BuildError(Exception):
    """llama.cpp could not be built; the message names the step and what to do."""


def _tool(name: str) -> str:
    """``name`` on PATH, else beside this Python (the venv's ``bin/``, where ``pip install cmake ninja`` puts it)."""
    path = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if path is None:
        raise BuildError(f"{name} not found on PATH: install it (`apt-get install cmake ninja-build`, or "
                         f"`pip install cmake ninja` in the venv) and fetch again")
    return path


def _sdist(work: Path) -> Path:
    """The pinned sdist in ``work`` (downloaded once), its sha256 checked against the pin."""
    sdist = work / lc.SDIST
    if not sdist.is_file():
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            f"{lc.PACKAGE}=={lc.VERSION}", "-d", str(work)], capture_output=True, text=True)
        if r.returncode or not sdist.is_file():
            raise BuildError(f"pip download {lc.PACKAGE}=={lc.VERSION} failed: {(r.stderr or r.stdout).strip()[-400:]}"
                             " — PyPI must be reachable for the first build")
    got = lc.file_sha256(sdist)
    if got != lc.SDIST_SHA256:
        sdist.unlink()
        raise BuildError(f"{lc.SDIST}: sha256 {got} is not the pinned {lc.SDIST_SHA256} (pipeline/"
                         "llama_cpp.py); the download was replaced or corrupted — fetch again")
    return sdist


def _source(work: Path) -> Path:
    src = work / "src"
    if not (src / "CMakeLists.txt").is_file():
        prefix = f"llama_cpp_python-{lc.VERSION}/vendor/llama.cpp/"
        tmp = work / "src.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(_sdist(work)) as tf:
            members = [m for m in tf.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(prefix):]
            tf.extractall(tmp, members=[m for m in members if m.name], filter="data")
        shutil.rmtree(src, ignore_errors=True)
        os.replace(tmp, src)
    return src


class _Bar:
    """Ninja's ``[step/total]`` lines as a progress bar (rich on a terminal; a line per 10 % elsewhere)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.tty, self.last = enabled, sys.stderr.isatty(), -1
        self.t0 = time.monotonic()

    def step(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        pct = 100 * done // total
        el = time.monotonic() - self.t0
        if self.tty:
            filled = 30 * done // total
            sys.stderr.write(f"\rbuilding llama.cpp {lc.VERSION} (once per machine) [{'#' * filled}"
                             f"{'.' * (30 - filled)}] {done}/{total} {el:5.0f} s")
        elif pct // 10 != self.last // 10:
            sys.stderr.write(f"building llama.cpp {lc.VERSION}: {done}/{total} steps, {el:.0f} s\n")
        self.last = pct
        sys.stderr.flush()

    def end(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def _compile(src: Path, build: Path, jobs: int, progress: bool) -> None:
    cmake, ninja = _tool("cmake"), _tool("ninja")
    if progress:
        sys.stderr.write(f"building llama.cpp {lc.VERSION} for this machine (once; {EXPECTED}) ..."
                         "\n")
    r = subprocess.run([cmake, "-S", str(src), "-B", str(build), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
                        *lc.CMAKE_FLAGS], capture_output=True, text=True)
    if r.returncode:
        raise BuildError(f"cmake configure failed: {(r.stderr or r.stdout).strip()[-600:]}")
    bar, tail = _Bar(progress), []
    proc = subprocess.Popen([cmake, "--build", str(build), "-j", str(jobs), "--target", *lc.BINARIES],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-20:]
        if m := _STEP.match(line):
            bar.step(int(m.group(1)), int(m.group(2)))
    bar.end()
    if proc.wait():
        raise BuildError("cmake --build failed:\n" + "\n".join(tail))


def ensure_built(progress: bool = True, jobs: int | None = None) -> Path:
    """The build dir for this machine (``llama-completion``, ``llama-bench``, ``build.json``), built now if absent."""
    from filelock import FileLock

    try:
        key = lc.build_key()
    except OSError as exc:
        raise BuildError(str(exc)) from None
    final = lc.key_dir(key)
    if lc.find()[0] == final:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if lc.find()[0] == final:
            return final
        work = final.parent / f".work-{final.name}"  # kept on failure: a retry resumes the compile
        work.mkdir(exist_ok=True)
        t0 = time.monotonic()
        src = _source(work)
        _compile(src, work / "build", jobs or max(1, os.cpu_count() or 1), progress)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for b in lc.BINARIES:
            built = work / "build" / "bin" / b
            if not built.is_file():
                raise BuildError(f"the build produced no {built}")
            shutil.copy2(built, tmp / b)
        info: dict[str, Any] = {**key, "built_s": round(time.monotonic() - t0, 1),
                                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                "sha256": {b: lc.file_sha256(tmp / b) for b in lc.BINARIES}}
        (tmp / "build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        os.replace(tmp, final)
        shutil.rmtree(work, ignore_errors=True)
    if progress:
        sys.stderr.write(f"built llama.cpp {lc.VERSION} in {info['built_s']:.0f} s: {final}\n")
    return final


def app_dir(out: Path, progress: bool = True) -> Path:
    """The app dir the fetch stage records for ``app.source=build``: the two binaries (hard links into the build)
    and ``build.json`` (the key: sdist sha256, flags, compilers, CPU), so the manifest names what was built."""
    from pipeline.fetch.fetched import mirror_dir

    return mirror_dir(ensure_built(progress), out)


def main(argv: list[str] | None = None) -> int:
    """CLI: build (or find) llama.cpp and print its directory."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.fetch.llama_build", description=__doc__.splitlines()[0])
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default: all CPUs)")
    ap.add_argument("--print", action="store_true", help="print the build dir if built, else exit 1 (never builds)")
    args = ap.parse_args(argv)
    if args.print:
        d, why = lc.find()
        print(d if d else why, file=sys.stdout if d else sys.stderr)
        return 0 if d else 1
    try:
        print(ensure_built(progress=not args.quiet, jobs=args.jobs))
    except BuildError as exc:
        print(f"llama.cpp build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
