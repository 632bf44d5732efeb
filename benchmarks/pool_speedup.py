"""The same 6-job Hydra sweep on a pool of 3 virtual devices: serial (n_jobs=1) vs parallel (n_jobs=3).

    python benchmarks/pool_speedup.py [--prompts 4] [--cooldown 2.0] [--scenario host|device|both]
                                      [--launcher pool|joblib]

``--launcher pool`` (default): forked workers that inherit what the sweep process preloaded (torch,
sentence-transformers, matplotlib, MLflow, the embedding model); ``joblib``: loky workers that each import and
load everything themselves. After each sweep it prints every job's per-phase profile (job_profile.json:
fetch, device wait, push, run, score; start offset from the launch; worker pid; warm start or not).

Everything runs in a temp dir (ODEVAL_ROOT) with a private adb server and three virtual devices on free ports,
removed at the end. A warm-up sweep (not timed) builds the tiny model and pushes it to all three devices, so both
timed sweeps start from the same state (0 bytes to push). Two scenarios:

- ``host``: the sweep as is. On the virtual device the "phone" is this host's CPU: the reference app, the adb
  daemon, Hydra/torch start-up of each job process, scoring (embedding model) all compete for the same 2 cores.
  Parallel jobs cannot beat the core count, and each joblib worker pays its own imports (torch, transformers,
  sentence-transformers ≈ seconds of CPU), so the speedup is well below 3× — the bound is CPU, not devices.
- ``device``: adds ``runtime.cooldown_s`` between prompts, i.e. time in which the *device* is busy and the host
  idles — what a real phone does (it computes on its own SoC). This is the part a pool parallelises, so here the
  ratio approaches min(n_jobs, devices) as device time dominates. Measured here (6 jobs x 4 prompts, 2 s per
  prompt): 1.4x — the lease log shows the three devices busy together, then ~10 s in which the three jobs'
  scoring (embedding model) and the next jobs' start-up share 2 cores before the next round of leases.

Prints per scenario: wall seconds serial and parallel, the ratio, the summed device-lease seconds (from the lease
log) and the CPU seconds used by all job processes (RUSAGE_CHILDREN) against the cores available.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.device.adb import run_adb  # noqa: E402
from pipeline.locks import LEASE_LOG, lock_dir_for, read_leases  # noqa: E402
from pipeline.virtual import stop  # noqa: E402

SWEEP = ["sequence=s128,s256", "prompting=plain,system,fewshot"]  # 6 jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHER = ["hydra/launcher=pool"]


def sweep(root: Path, env: dict[str, str], n_jobs: int, extra: list[str], name: str) -> tuple[float, float, float]:
    """One sweep → (wall s, CPU s of all child processes, summed lease s)."""
    (lock_dir_for(root) / LEASE_LOG).unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    STARTS[name] = time.time()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "-m", *LAUNCHER,
                           f"hydra.launcher.n_jobs={n_jobs}", f"hydra.sweep.dir={root / 'sweeps' / name}",
                           "hydra.sweep.subdir=${hydra.job.num}", *extra, *SWEEP],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"sweep {name} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    leases = read_leases(lock_dir_for(root))
    if len(leases) != 6:
        raise SystemExit(f"sweep {name}: expected 6 leases, the log has {len(leases)}")
    return wall, cpu, sum(r["t_release"] - r["t_acquire"] for r in leases)


STARTS: dict[str, float] = {}


def print_profile(root: Path, name: str) -> None:
    """Per-phase seconds of each job (pipeline.sweep writes job_profile.json), start offsets from the sweep's
    launch (the first job's offset is process start-up: Python + Hydra + imports), which worker ran it and whether
    that worker's preload had finished when the job started (warm)."""
    from pipeline.sweep.job import JOB_PROFILE

    profs = []
    for f in sorted((root / "sweeps" / name).glob(f"*/{JOB_PROFILE}")):
        profs.append((f.parent.name, json.loads(f.read_text())))
    if not profs:
        print(f"  (no {JOB_PROFILE} in sweep {name})")
        return
    phases = list(profs[0][1]["phases_s"])
    print(f"  per-job profile of sweep {name} (s; start = seconds after the sweep command was launched):")
    print("  job  pid      start " + " ".join(f"{p:>11s}" for p in phases) + "  warm")
    for job, p in sorted(profs, key=lambda x: x[1]["job_start"]):
        print(f"  {job:>3s}  {p['pid']:<7d} {p['job_start'] - STARTS[name]:6.1f} "
              + " ".join(f"{p['phases_s'].get(k, float('nan')):11.2f}" for k in phases)
              + f"  {'yes' if p.get('warm_start') else 'no'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=4, help="prompts per job (prompts.limit)")
    ap.add_argument("--cooldown", type=float, default=2.0, help="device-bound scenario: seconds per prompt")
    ap.add_argument("--scenario", choices=("host", "device", "both"), default="both")
    ap.add_argument("--workers", type=int, default=3,
                    help="parallel sweep: worker processes (n_jobs). More workers than devices lets a job score "
                         "while the next one already holds the device it released")
    ap.add_argument("--launcher", choices=("pool", "joblib"), default="pool",
                    help="pool = forked workers that inherit what the sweep preloads (conf/hydra/launcher/pool.yaml); "
                         "joblib = loky workers, each importing and loading everything itself")
    args = ap.parse_args()
    LAUNCHER[:] = [f"hydra/launcher={args.launcher}"]

    root = Path(tempfile.mkdtemp(prefix="odeval-pool-bench-"))
    adb_port = free_port()
    ports = [free_port() for _ in range(3)]
    env = {**os.environ, "ODEVAL_ROOT": str(root), "ODEVAL_CACHE": str(root / "build-cache"), "PYTHONPATH": str(REPO),
           "ANDROID_ADB_SERVER_PORT": str(adb_port), "ODEVAL_QUIET": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    base = ["device=pool-virtual", "tracking=none", f"paths.cache={root / 'cache'}",
            f"prompts.path={REPO / 'prompts' / 'qa.jsonl'}", f"prompts.limit={args.prompts}", "session=fresh"]
    for i, port in enumerate(ports):
        base += [f"device.pool.{i}.virtual_root={root / f'dev{i}'}", f"device.pool.{i}.virtual_port={port}"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        run_adb(["start-server"], port=adb_port, timeout=30)
        print(f"warm-up sweep (builds the tiny model, pushes to 3 devices) in {root} ...", flush=True)
        sweep(root, env, 3, base, "warmup")
        scenarios = {"host": [], "device": [f"runtime.cooldown_s={args.cooldown}"]}
        chosen = list(scenarios) if args.scenario == "both" else [args.scenario]
        rows = []
        for sc in chosen:
            for n_jobs in (1, args.workers):
                wall, cpu, busy = sweep(root, env, n_jobs, base + scenarios[sc], f"{sc}-{n_jobs}")
                rows.append((sc, n_jobs, wall, cpu, busy))
                print(f"  {sc:6s} n_jobs={n_jobs}: wall {wall:6.1f} s  cpu {cpu:6.1f} s  device-leased {busy:6.1f} s",
                      flush=True)
                print_profile(root, f"{sc}-{n_jobs}")
        print(f"\n6 jobs x {args.prompts} prompts, 3 virtual devices, {cores} cores (CPU-s / (wall * cores) = load)")
        print(f"{'scenario':8s} {'serial s':>9s} {'parallel s':>11s} {'speedup':>8s} {'load serial':>12s} "
              f"{'load par.':>10s} {'device s ser/par':>17s}")
        for sc in chosen:
            (_, _, w1, c1, b1), (_, _, w3, c3, b3) = [r for r in rows if r[0] == sc]  # serial, parallel
            print(f"{sc:8s} {w1:9.1f} {w3:11.1f} {w1 / w3:7.2f}x {c1 / (w1 * cores):12.2f} {c3 / (w3 * cores):10.2f} "
                  f"{b1:8.1f}/{b3:<8.1f}")
        cpu_job = {sc: [r[3] / 6 for r in rows if r[0] == sc and r[1] == args.workers][0] for sc in chosen}
        print("\nhost CPU seconds per job in the parallel sweep (imports, fetch, scoring with the embedding model, "
              "the reference app): " + ", ".join(f"{sc} {v:.1f}" for sc, v in cpu_job.items()))
        print("host: the virtual devices ARE this host's CPU; the bound is the cores (load near 1.0 in parallel)\n"
              "      and per-worker start-up (imports) — more jobs at once cannot beat the core count.\n"
              "device: the device-busy time (cooldown here, the SoC on a real phone) overlaps across devices, so the\n"
              "      speedup approaches min(n_jobs, devices) only when device time dominates; here each job's\n"
              "      host work (worker imports, fetch, score) still queues for the 2 cores between device rounds.")
        print(json.dumps({"rows": [dict(zip(("scenario", "n_jobs", "wall_s", "cpu_s", "device_s"), r, strict=True))
                                   for r in rows], "cores": cores}))
    finally:
        for i in range(3):
            run_adb(["disconnect", f"127.0.0.1:{ports[i]}"], port=adb_port, timeout=10)
            stop(root / f"dev{i}")
        run_adb(["kill-server"], port=adb_port, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
