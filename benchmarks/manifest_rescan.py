"""Manifest re-scan cost: a ~1 GB dir of 10 files hashed cold vs re-scanned with the persisted HashCache.

Also times a fetch_snapshot of a cached pinned commit (zero requests) vs the same fetch cold, against the local
Hub fixture. Run: ``.venv/bin/python benchmarks/manifest_rescan.py [--mb 1024] [--files 10]``.
Everything lives in a temp dir that is deleted at the end; no network.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.fetch.manifest import HashCache, scan_dir  # noqa: E402


def _make_dir(root: Path, total_mb: int, n_files: int) -> None:
    root.mkdir(parents=True)
    per = total_mb * (1 << 20) // n_files
    block = os.urandom(1 << 20)
    for i in range(n_files):
        with open(root / f"shard-{i:02d}.bin", "wb") as fh:
            left = per
            while left > 0:
                fh.write(block[: min(left, len(block))])
                left -= len(block)


def _timed(fn, repeat: int = 1) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_manifest(tmp: Path, total_mb: int, n_files: int) -> None:
    data = tmp / "model"
    _make_dir(data, total_mb, n_files)
    cache_path = tmp / "hashes.json"
    cold_cache = HashCache(cache_path)
    cold, entries = _timed(lambda: scan_dir(data, cache=cold_cache))
    cold_cache.save()
    # a new HashCache each time = what a new `dvc repro` process pays (JSON load + stat per file)
    warm, again = _timed(lambda: scan_dir(data, cache=HashCache(cache_path)), repeat=5)
    assert again == entries
    size = sum(e.size for e in entries)
    print(f"manifest: {len(entries)} files, {size / 1e9:.2f} GB")
    print(f"  cold scan (sha256 every byte):      {cold * 1000:9.1f} ms  ({size / cold / 1e6:.0f} MB/s)")
    print(f"  warm re-scan (HashCache, new proc): {warm * 1000:9.2f} ms")
    print(f"  ratio cold/warm:                    {cold / warm:9.0f}x")


def bench_fetch(tmp: Path) -> None:
    os.environ.update(HF_HOME=str(tmp / "hf"), HF_HUB_DISABLE_XET="1", ODEVAL_HASH_CACHE=str(tmp / "h2.json"))
    os.environ.pop("HF_TOKEN", None)
    from huggingface_hub import constants

    constants.HF_HUB_CACHE = str(tmp / "hf" / "hub")
    from pipeline.fetch.hub import fetch_snapshot
    from tests.helpers.hub_server import HubServer, synthetic_model_files

    with HubServer() as server:
        sha = server.add_repo("bench/model", synthetic_model_files(weight_bytes=8 << 20))
        cold, _ = _timed(
            lambda: fetch_snapshot("bench/model", sha, allow_patterns=None, endpoint=server.url, progress=False)
        )
        n_cold = len(server.requests)
        server.clear_log()
        warm, _ = _timed(
            lambda: fetch_snapshot("bench/model", sha, allow_patterns=None, endpoint=server.url, progress=False),
            repeat=5,
        )
        n_warm = len(server.requests)
    print("fetch (5 files, 8 MB weights, local Hub fixture):")
    print(f"  cold fetch:            {cold * 1000:8.1f} ms  ({n_cold} requests)")
    print(f"  cached pinned fetch:   {warm * 1000:8.2f} ms  ({n_warm} requests over 5 runs)")
    print(f"  ratio cold/cached:     {cold / warm:8.0f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024, help="total size of the scanned dir in MiB")
    ap.add_argument("--files", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="odeval-bench-") as tmp:
        bench_manifest(Path(tmp), args.mb, args.files)
        bench_fetch(Path(tmp))


if __name__ == "__main__":
    main()
