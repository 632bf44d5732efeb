"""Build the reference app's native kernel (``qkernel.c``) once per machine into ``$ODEVAL_CACHE/native``.

The key (source, flags, compiler, CPU) and the lookup are :mod:`pipeline.native_kernel`. The kernel is built by
``make install``, by the fetch stage (which records it in the reference app's ``app.json``, so the native code is
part of every result's identity: :func:`status`) or by ``python -m pipeline.guest.native_build``; never by the app,
which runs confined on the virtual device and only *finds* it. With no compiler (or a failed build) the app runs
the numpy engine and says why: nothing breaks, it is only slower.

On the virtual device the app's Landlock domain may read the library's directory: the daemon passes its path in
``ODEVAL_QKERNEL`` and grants read+execute on that one directory (``Daemon.host_reads``), not on the rest of the
cache (which holds other models and the host's hash cache).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pipeline import native_kernel as nk

LABEL = "building the reference app's native kernel (once per machine)"
EXPECTED_S = 4.0  # a typical build on a 2-core host: what the bar fills against


class BuildError(Exception):
    """The kernel could not be built (the message is the reason the app records)."""


def _progress(done: threading.Event, bar: bool) -> None:
    """While the compiler runs (it reports no progress of its own): on a terminal a one-line bar that fills against
    the expected time with the elapsed seconds; elsewhere (CI logs, pipes) one line at the start."""
    width, t0 = 30, time.monotonic()
    if not bar:
        sys.stderr.write(f"{LABEL} ...\n")
        sys.stderr.flush()
        done.wait()
        return
    while not done.wait(0.2):
        el = time.monotonic() - t0
        filled = min(width - 1, int(width * el / EXPECTED_S))
        sys.stderr.write(f"\r{LABEL} [{'#' * filled}{'.' * (width - filled)}] {el:4.1f} s")
        sys.stderr.flush()
    sys.stderr.write(f"\r{LABEL} [{'#' * width}] {time.monotonic() - t0:4.1f} s\n")
    sys.stderr.flush()


def _compile(cc: str, out: Path, openmp: bool) -> subprocess.CompletedProcess:
    args = [cc, *nk.FLAGS, *([nk.OPENMP_FLAG] if openmp else []), "-o", str(out), str(nk.SOURCE), "-lm"]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def ensure_built(progress: bool = True) -> Path:
    """The library for this machine, compiled now if it is not in the cache (file-locked, temp dir + rename).

    ``progress``: a bar on a terminal (a start line elsewhere) while the compiler runs; either way one status line
    when a build finishes (where the library is, how long it took)."""
    from filelock import FileLock

    cc = nk.compiler()
    if cc is None:
        raise BuildError(nk.NO_COMPILER)
    key = nk.build_key(cc)
    final = nk.key_dir(key)
    if (final / nk.LIB_NAME).is_file():
        return final / nk.LIB_NAME
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / nk.LIB_NAME).is_file():
            return final / nk.LIB_NAME
        tmp = Path(tempfile.mkdtemp(prefix=".qkernel-", dir=final.parent))
        try:
            done = threading.Event()
            bar = threading.Thread(target=_progress, args=(done, sys.stderr.isatty()), daemon=True)
            if progress:
                bar.start()
            t0 = time.monotonic()
            try:
                r = _compile(cc, tmp / nk.LIB_NAME, openmp=True)
                openmp = r.returncode == 0
                if not openmp:  # no libgomp/omp.h: single-threaded, same numbers
                    r = _compile(cc, tmp / nk.LIB_NAME, openmp=False)
            finally:
                done.set()
                if progress:
                    bar.join()
            if r.returncode:
                raise BuildError(f"{cc} failed on {nk.SOURCE.name}: {(r.stderr or r.stdout).strip()[-600:]}")
            _self_test(tmp / nk.LIB_NAME)
            info = {**key, "openmp": openmp, "built_s": round(time.monotonic() - t0, 2),
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / "build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.chmod(tmp, 0o755)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.stderr.write(f"built the reference app's native kernel in {info['built_s']:.1f} s: {final / nk.LIB_NAME} "
                     f"(openmp={openmp})\n")
    return final / nk.LIB_NAME


def _self_test(lib: Path) -> None:
    from pipeline.guest.qkernel import ABI

    try:
        got = ctypes.CDLL(str(lib)).qk_abi()
    except OSError as exc:
        raise BuildError(f"the built {lib.name} does not load ({exc})") from exc
    if got != ABI:
        raise BuildError(f"the built {lib.name} reports ABI {got}, expected {ABI}")


def status(build: bool = True, progress: bool = True) -> dict[str, Any]:
    """What app.json records: ``{"status": "built", key…}`` or ``{"status": "unavailable", "reason": …}``."""
    try:
        lib = ensure_built(progress) if build else nk.find()[0]
    except (BuildError, OSError, subprocess.SubprocessError) as exc:
        return {"status": "unavailable", "reason": str(exc)}
    if lib is None:
        return {"status": "unavailable", "reason": nk.find()[1]}
    info = json.loads((lib.parent / "build.json").read_text(encoding="utf-8"))
    return {"status": "built", "dir": lib.parent.name, **{k: info[k] for k in ("source_sha256", "flags", "compiler",
                                                                             "openmp", "cpu_flags_sha256")}}


def main(argv: list[str] | None = None) -> int:
    """CLI: build (or find) the kernel and print where it is; exit 0 even without a compiler (numpy then runs)."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.guest.native_build", description=__doc__.splitlines()[0])
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    st = status(build=True, progress=not args.quiet)
    if st["status"] == "built":
        lib = nk.cache_dir() / st["dir"] / nk.LIB_NAME
        print(f"reference app kernel: {lib} ({st['compiler']}, openmp={st['openmp']})")
    else:
        print(f"reference app kernel unavailable: {st['reason']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
