"""Push throughput and no-op cost on the virtual device, side by side with `adb push` of the same dir.

    python benchmarks/push_incremental.py [--gb 1.0] [--files 10] [--random] [--repeats 1]

Creates a model-like dir (~10 files; sparse by default, --random for incompressible bytes) in a temp dir, starts
a private adb server + a virtual device in temp dirs, and measures:

1. cold push with pipeline.device.transfer.push_dir (on-device sha256 + mv per file) with each mover — ``sync``
   (our 64 KiB sync client) and ``adb`` (the adb binary per file) — vs `adb push` of the same dir (no
   verification), interleaved, medians → MB/s each and the ratios (goal ≥ 0.9);
2. a no-op re-push (nothing changed: one stat round trip) vs `adb push` again (re-sends everything) → seconds each
   and the ratio (goal ≥ 10×; goal for the no-op itself ≤ 1.5 s).

Also reports adbutils' own ``sync.push`` (4 KiB chunks) on one file for reference. Everything it created (host
files, device storage, adb server on its own port) is removed at the end. MB = 10^6 bytes. These are loopback
numbers on this host (the virtual device's throughput is the host's, not a phone's).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.device.adb import adb_path, run_adb  # noqa: E402
from pipeline.device.connect import get_device  # noqa: E402
from pipeline.device.transfer import push_dir  # noqa: E402
from pipeline.fetch.manifest import scan_dir  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_dir(root: Path, total: int, n: int, random_bytes: bool) -> None:
    """n files summing to `total` bytes: a few small ones (tokenizer/meta-like) and big shards."""
    root.mkdir(parents=True)
    small = [4096, 500_000]
    big = (total - sum(small)) // (n - len(small))
    sizes = small + [big] * (n - len(small))
    for i, size in enumerate(sizes):
        p = root / f"part-{i:02d}.bin"
        with open(p, "wb") as fh:
            if random_bytes:
                left = size
                while left:
                    k = min(left, 8 << 20)
                    fh.write(os.urandom(k))
                    left -= k
            else:
                fh.truncate(size)  # sparse: cheap to create, reads as zeros


def warm(root: Path) -> None:
    """Read every file once so both pushers start from the page cache."""
    for p in root.iterdir():
        with open(p, "rb") as fh:
            while fh.read(8 << 20):
                pass


def adb_push(adb_port: int, serial: str, src: Path, dst: str) -> float:
    t = time.monotonic()
    proc = run_adb(["-s", serial, "push", str(src), dst], port=adb_port, timeout=600)
    dt = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(f"adb push failed: {proc.stderr.decode(errors='replace').strip()}")
    return dt


def cpu_report(dev, model: Path, entries, vroot: Path, adb_port: int, serial: str) -> None:
    """CPU seconds of the virtual device daemon and the adb server per cold push (why verification is not free
    here: the 'device' CPU that runs sha256sum is this host's CPU, shared with the sender and the adb server)."""
    try:
        import psutil
    except ImportError:
        print("(psutil missing: no CPU breakdown)")
        return
    from pipeline.virtual import status
    from pipeline.virtual.layout import storage_dir

    daemon = psutil.Process(int(status(vroot)["pid"]))
    servers = [p for p in psutil.process_iter(["cmdline"])
               if "fork-server" in " ".join(p.info["cmdline"] or []) and str(adb_port) in " ".join(p.info["cmdline"])]

    def cpu(p) -> float:
        t = p.cpu_times()
        return t.user + t.system

    for name in ("push_dir mover=sync", "adb push (dir)"):
        before = (cpu(daemon), sum(cpu(s) for s in servers))
        if name.startswith("push_dir"):
            push_dir(dev, model, "/data/local/tmp/bench/cpu/m", entries)
        else:
            adb_push(adb_port, serial, model, "/data/local/tmp/bench/cpu")
        after = (cpu(daemon), sum(cpu(s) for s in servers))
        shutil.rmtree(storage_dir(vroot) / "data/local/tmp/bench/cpu")
        print(f"cpu seconds, {name:<20}: device daemon {after[0] - before[0]:.2f}, adb server "
              f"{after[1] - before[1]:.2f}")


def send_only(dev, model: Path, entries, remote: str) -> float:
    """Our sync client alone (one session, 64 KiB DATA, no hashing, no mv): its speed against adb's own push."""
    from pipeline.device.sender import SyncSession

    dev.shell2(f"mkdir -p {remote}")
    t = time.monotonic()
    session = SyncSession(dev)
    for e in entries:
        session.send(model / e.path, f"{remote}/{e.path}", 0o644, 0, lambda _n: None)
    session.close()
    return time.monotonic() - t


def cold(dev, vroot: Path, model: Path, entries, size: int, adb_port: int, serial: str, cap_mbs: float,
         args: argparse.Namespace) -> None:
    """Cold pushes under one link cap (0 = uncapped), interleaved with `adb push` so load hits all alike."""
    from pipeline.virtual.faults import write_faults
    from pipeline.virtual.layout import storage_dir

    write_faults(vroot, **({"bandwidth_bytes_per_s": int(cap_mbs * 1e6)} if cap_mbs else {}))
    label = f"cap {cap_mbs:g} MB/s" if cap_mbs else "uncapped"
    times: dict[str, list[float]] = {**{f"push_dir mover={m}": [] for m in args.movers}, "adb push (dir)": []}
    phases: list[tuple[float, float, float, float]] = []  # send, verify (device), verify not hidden, rest (host)
    times["sync client send only"] = []
    for r in range(args.repeats):
        times["sync client send only"].append(send_only(dev, model, entries, f"/data/local/tmp/bench/raw{r}"))
        shutil.rmtree(storage_dir(vroot) / f"data/local/tmp/bench/raw{r}")
        for mover in args.movers:
            remote = f"/data/local/tmp/bench/{mover}{r}/models/m@1234567"
            res = push_dir(dev, model, remote, entries, mover=mover)
            assert res.bytes_sent == size and res.files_sent == len(entries)
            times[f"push_dir mover={mover}"].append(res.seconds)
            if mover == "sync":
                rest = res.seconds - res.send_seconds - res.verify_wait_seconds
                phases.append((res.send_seconds, res.verify_seconds, res.verify_wait_seconds, rest))
            shutil.rmtree(storage_dir(vroot) / f"data/local/tmp/bench/{mover}{r}")
        times["adb push (dir)"].append(adb_push(adb_port, serial, model, f"/data/local/tmp/bench/adb{r}"))
        shutil.rmtree(storage_dir(vroot) / f"data/local/tmp/bench/adb{r}")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n[{label}]")
    for k, v in times.items():
        runs = " ".join(f"{size / 1e6 / t:.0f}" for t in v)
        print(f"cold {k:<22} median {med[k]:.2f} s = {size / 1e6 / med[k]:4.0f} MB/s   (runs MB/s: {runs})")
    ref = med["adb push (dir)"]
    goal = 0.95 if cap_mbs else 0.9
    for mover in args.movers:
        print(f"throughput ratio push_dir(mover={mover}) / adb push = {ref / med[f'push_dir mover={mover}']:.2f}"
              f"  (goal >= {goal})")
    print(f"sync client send alone (no verification) / adb push = {ref / med['sync client send only']:.2f}"
          "  (goal >= 0.9)")
    if phases:
        send, ver, hidden_not, rest = (statistics.median(x) for x in zip(*phases, strict=True))
        print(f"send inside push_dir (verification of the previous file running beside it) / adb push = "
              f"{ref / send:.2f}")
        print(f"phases (median s): send {send:.2f} | device sha256+mv {ver:.2f} of which not hidden behind a send "
              f"{hidden_not:.2f} | host + round trips (probe, mkdir, df, manifest) {rest:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="total size of the model dir in GB (10^9 bytes)")
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--random", action="store_true", help="random bytes instead of sparse files")
    ap.add_argument("--repeats", type=int, default=3, help="cold measurements per method (median reported)")
    ap.add_argument("--caps", type=lambda v: [float(x) for x in v.split(",")], default=[0.0, 300.0, 40.0],
                    help="link caps in MB/s to emulate a USB link (virtual device fault bandwidth_bytes_per_s); "
                         "0 = uncapped; comma-separated (default 0,300,40)")
    ap.add_argument("--movers", type=lambda v: v.split(","), default=["sync", "adb"],
                    help="push_dir movers to measure (sync,adb)")
    args = ap.parse_args()

    from pipeline.virtual import stop
    from pipeline.virtual.faults import write_faults

    work = Path(tempfile.mkdtemp(prefix="odeval-bench-push-"))
    adb_port = free_port()
    os.environ["ANDROID_ADB_SERVER_PORT"] = str(adb_port)
    os.environ["ADBUTILS_ADB_PATH"] = adb_path()
    vroot = work / "device"
    try:
        model = work / "model"
        total = int(args.gb * 1e9)
        make_dir(model, total, args.files, args.random)
        warm(model)
        t = time.monotonic()
        entries = scan_dir(model)
        t_hash = time.monotonic() - t
        dev = get_device("virtual", adb_port=adb_port, virtual_root=vroot, virtual_port=free_port())
        serial = dev.serial
        size = sum(e.size for e in entries)
        print(f"dir: {len(entries)} files, {size / 1e6:.0f} MB ({'random' if args.random else 'sparse'}); "
              f"host sha256 scan {t_hash:.2f} s (done once by fetch, cached)")

        for cap in args.caps:
            cold(dev, vroot, model, entries, size, adb_port, serial, cap, args)
        write_faults(vroot)  # uncapped again for what follows

        cpu_report(dev, model, entries, vroot, adb_port, serial)

        remote = "/data/local/tmp/bench/ours/models/m@1234567"
        push_dir(dev, model, remote, entries)
        t = time.monotonic()
        noop = push_dir(dev, model, remote, entries)
        t_noop = time.monotonic() - t
        assert noop.bytes_sent == 0
        t_adb_again = adb_push(adb_port, serial, model, "/data/local/tmp/bench/adb-again")
        print(f"no-op re-push: {t_noop:.3f} s (bytes_sent=0; goal <= 1.5 s); adb push again: {t_adb_again:.2f} s; "
              f"ratio = {t_adb_again / t_noop:.0f}x  (goal >= 10x)")
        t = time.monotonic()
        full = push_dir(dev, model, remote, entries, verify="full")
        print(f"no-op re-push with verify=full (device re-hashes everything): {time.monotonic() - t:.2f} s "
              f"(adopted {full.files_adopted} files)")

        one = model / "part-02.bin"
        t = time.monotonic()
        dev.sync.push(str(one), "/data/local/tmp/bench/adbutils-sync.bin")
        dt = time.monotonic() - t
        t = time.monotonic()
        run_adb(["-s", serial, "push", str(one), "/data/local/tmp/bench/adb-one.bin"], port=adb_port, timeout=600)
        dt_adb = time.monotonic() - t
        print(f"one file {one.stat().st_size / 1e6:.0f} MB: adbutils sync.push (4 KiB) "
              f"{one.stat().st_size / 1e6 / dt:.0f} MB/s vs adb push {one.stat().st_size / 1e6 / dt_adb:.0f} MB/s")
    finally:
        stop(vroot)
        subprocess.run([adb_path(), "-P", str(adb_port), "kill-server"], capture_output=True, timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
