"""Push throughput to the virtual device: `adb push` (real binary) vs adbutils `sync.push`, side by side.

Run: ``.venv/bin/python benchmarks/push_throughput.py [--mb 50] [--repeats 3]``.  Uses a private adb server port
and a temp device root; kills only what it started.  Prints MB/s (median of repeats) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.device.adb import run_adb  # noqa: E402
from pipeline.device.connect import get_device  # noqa: E402
from pipeline.virtual import stop  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=int, default=50, help="file size in MB (10^6 bytes)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    adb_port, dev_port = _free_port(), _free_port()
    os.environ["ANDROID_ADB_SERVER_PORT"] = str(adb_port)
    with tempfile.TemporaryDirectory() as tmp:
        root, src = Path(tmp) / "device", Path(tmp) / "payload.bin"
        src.write_bytes(os.urandom(args.mb * 1_000_000))
        size_mb = src.stat().st_size / 1e6
        try:
            dev = get_device("virtual", adb_port=adb_port, virtual_root=root, virtual_port=dev_port)
            results: dict[str, list[float]] = {"adb push": [], "adbutils sync.push": [], "adb pull": []}
            for i in range(args.repeats):
                t = time.perf_counter()
                r = run_adb(["-s", dev.serial, "push", str(src), f"/data/local/tmp/bench{i}.bin"], port=adb_port,
                            timeout=300)
                results["adb push"].append(size_mb / (time.perf_counter() - t))
                assert r.returncode == 0, r.stderr
                t = time.perf_counter()
                dev.sync.push(src, f"/data/local/tmp/bench-u{i}.bin")
                results["adbutils sync.push"].append(size_mb / (time.perf_counter() - t))
                t = time.perf_counter()
                r = run_adb(["-s", dev.serial, "pull", f"/data/local/tmp/bench{i}.bin", str(Path(tmp) / "back.bin")],
                            port=adb_port, timeout=300)
                results["adb pull"].append(size_mb / (time.perf_counter() - t))
                assert r.returncode == 0, r.stderr
                assert (Path(tmp) / "back.bin").stat().st_size == src.stat().st_size
                dev.shell(f"rm -f /data/local/tmp/bench{i}.bin /data/local/tmp/bench-u{i}.bin")
        finally:
            run_adb(["disconnect", f"127.0.0.1:{dev_port}"], port=adb_port)
            stop(root)
            run_adb(["kill-server"], port=adb_port)
    print(f"payload {size_mb:.0f} MB, {args.repeats} repeats (median MB/s; includes adb process start for the CLI)")
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in med.items():
        print(f"  {k:<20} {v:8.1f} MB/s   (all: {', '.join(f'{x:.0f}' for x in results[k])})")
    print(f"  ratio adb push / adbutils sync.push = {med['adb push'] / med['adbutils sync.push']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
