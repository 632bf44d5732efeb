"""A device-bound sweep on 4 virtual devices over 2 Ray nodes (`hydra/launcher=ray`) vs the same sweep serially.

    python benchmarks/ray_speedup.py [--jobs 8] [--prompts 2] [--cooldown 3.0]

Sets up what tests/cluster does (tests/cluster/local_cluster.py): a Ray head and a second node on 127.0.0.1, each
started by `python -m pipeline.cluster ray-start` owning two virtual devices, a private adb server, a temp root.
"Device-bound": ``runtime.cooldown_s`` seconds per prompt in which the device is busy and the host idles — what a
real phone does (it computes on its own SoC); on a virtual device everything else is this host's CPU, so the ratio
is bounded by the cores here (2 on the dev box) as well as by the 4 devices. A warm-up job (not timed) builds the
tiny model and pushes it to every device, so both timed sweeps start with 0 bytes to push.

Prints wall seconds serial (Hydra's basic launcher, one device) and on Ray, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.device.adb import run_adb  # noqa: E402
from tests.cluster.local_cluster import LocalCluster  # noqa: E402

PROMPTING = ["plain", "system"]
SEQUENCES = ["s128", "s256", "s512", "s1024"]


def _sweep(c: LocalCluster, tmp: Path, name: str, extra: list[str], axes: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "-m", *extra, f"hydra.sweep.dir={tmp / name}",
                           "tracking=none", f"paths.cache={tmp / 'cache'}", *axes],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} sweep failed:\n{proc.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=8, choices=(2, 4, 8))
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--cooldown", type=float, default=3.0, help="device-busy seconds per prompt")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="odeval-ray-bench-"))
    from tests.cluster.local_cluster import free_port

    adb_port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ODEVAL_QUIET": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "ANDROID_ADB_SERVER_PORT": str(adb_port),
           "ODEVAL_CACHE": str(tmp / "odeval-cache"), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    run_adb(["start-server"], port=adb_port, timeout=30)
    c = LocalCluster(base=tmp, env=env)
    try:
        c.add_node("a", 2, (22000, 22199))
        c.add_node("b", 2, (22200, 22399))
        n_seq = args.jobs // len(PROMPTING)
        axes = [f"prompting={','.join(PROMPTING)}", f"sequence={','.join(SEQUENCES[:n_seq])}"]
        common = [f"prompts.limit={args.prompts}", f"prompts.path={REPO / 'prompts' / 'qa.jsonl'}",
                  f"runtime.cooldown_s={args.cooldown}", "device=pool-virtual",
                  "+device.require.chip=virtual"]
        ctl = {**env, "ODEVAL_ROOT": str(tmp / "controller")}
        ray = ["hydra/launcher=ray", f"hydra.launcher.ray.init.address={c.address}", *common]
        _sweep(c, tmp, "warmup", ray, [f"prompting={','.join(PROMPTING)}", "sequence=s128,s256"], ctl)  # every device
        first = c.nodes[0].devices[0]  # serial: Hydra's basic launcher, one job at a time on one device
        serial_args = [*common, f"device.pool.0.virtual_root={first.virtual_root}",
                       f"device.pool.0.virtual_port={first.virtual_port}"]
        serial = _sweep(c, tmp, "serial", serial_args, axes, {**env, "ODEVAL_ROOT": str(c.nodes[0].root)})
        parallel = _sweep(c, tmp, "ray", ray, axes, ctl)
        print(f"{args.jobs} jobs x {args.prompts} prompts, {args.cooldown:g} s device time per prompt, "
              f"{os.cpu_count()} host cores")
        print(f"serial (basic launcher, 1 device): {serial:7.1f} s")
        print(f"ray (2 nodes x 2 devices):        {parallel:7.1f} s")
        print(f"ratio serial/ray: {serial / parallel:.2f}x")
    finally:
        c.stop()
        run_adb(["kill-server"], port=adb_port, timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
