"""Costs of MLflow tracking and telemetry sampling, side by side, with ratios.

Measures in one run (temp dirs only; nothing touches the repo's mlflow.db):
- ``import mlflow`` (why tracking imports it lazily),
- the first ``log_run`` on a fresh sqlite store (creates tables) vs an idempotent re-log of the same run_key,
- how long a closed loopback port takes to raise ``TrackingUnavailable`` with our bounds vs retries=0
  (``--default`` also measures MLflow's defaults: 7 retries, backoff 2 — minutes, so off by default),
- one telemetry sample (command build + parse) over a fake 16-zone / 8-CPU tree.

Run: ``.venv/bin/python benchmarks/tracking_speed.py [--default]``
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def fail_time(env: dict[str, str]) -> float:
    """Time for log_run against a closed port in a fresh process (MLflow caches HTTP sessions per setting)."""
    code = (
        "import time,sys,mlflow; from pipeline import tracking as T\n"
        "t=time.perf_counter()\n"
        "try:\n"
        f"    T.log_run(tracking_uri={closed_port_uri()!r}, experiment='e', run_key='k', params={{}},"
        " metrics={}, tags={}, artifacts=[])\n"
        "except T.TrackingUnavailable: pass\n"
        "print(time.perf_counter()-t)\n"
    )
    full = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return float(out.stdout.strip().splitlines()[-1])


def bench_telemetry() -> float:
    from pipeline.device.telemetry import TelemetrySampler

    files = {f"/sys/class/thermal/thermal_zone{i}/{k}": (f"tz{i}\n" if k == "type" else "41000\n")
             for i in range(16) for k in ("type", "temp")}
    files.update({f"/sys/devices/system/cpu/cpu{i}/cpufreq/scaling_cur_freq": "1800000\n" for i in range(8)})

    def shell(cmd: str) -> str:
        if cmd.startswith("ls /sys/class/thermal"):
            return "\n".join(f"thermal_zone{i}" for i in range(16))
        if cmd.startswith("ls "):
            return "\n".join(f"cpu{i}" for i in range(8))
        out = []
        for seg in cmd.split("; "):
            verb, _, arg = seg.partition(" ")
            out.append(arg + "\n" if verb == "echo" else files.get(arg, ""))
        return "".join(out)

    sampler = TelemetrySampler(shell)
    sampler.sample()
    n = 500
    t, _ = timed(lambda: [sampler.sample() for _ in range(n)])
    return t / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--default", action="store_true", help="also time MLflow's default retries (minutes)")
    args = ap.parse_args()
    t_import, _ = timed(lambda: __import__("mlflow"))
    from pipeline import tracking

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/stray.db"
        uri = tracking.resolve_tracking_uri("sqlite:///mlflow.db", Path(tmp))
        (Path(tmp) / "r.jsonl").write_text("{}\n")
        kw = dict(tracking_uri=uri, experiment="bench", run_key="k1", params={"a": {"b": list(range(50))}},
                  metrics={f"m{i}": float(i) for i in range(60)}, tags={"x": "y"}, artifacts=[Path(tmp) / "r.jsonl"],
                  tables={"prompts": [{"id": i, "v": i * 0.5} for i in range(200)]})
        t_first, _ = timed(lambda: tracking.log_run(**kw))
        t_again, _ = timed(lambda: tracking.log_run(**kw))
        kw["run_key"] = "k2"
        t_new, _ = timed(lambda: tracking.log_run(**kw))
    t_bounded = fail_time({})
    t_zero = fail_time({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    t_sample = bench_telemetry()
    print(f"import mlflow                         {t_import:8.2f} s")
    print(f"log_run, fresh sqlite store           {t_first:8.2f} s   (creates tables)")
    print(f"log_run, new run, existing store      {t_new:8.2f} s")
    print(f"log_run, idempotent update            {t_again:8.2f} s   update/new = {t_again / t_new:.2f}")
    print(f"unreachable, our bounds (2 retries)   {t_bounded:8.2f} s")
    print(f"unreachable, MLFLOW_..._RETRIES=0     {t_zero:8.2f} s   bounded/zero = {t_bounded / t_zero:.1f}")
    if args.default:
        t_default = fail_time({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                               "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"})
        print(f"unreachable, MLflow defaults          {t_default:8.2f} s   default/bounded = "
              f"{t_default / t_bounded:.0f}")
    print(f"telemetry sample (16 zones, 8 cpus)   {t_sample * 1e3:8.3f} ms  (host-side build+parse only)")


if __name__ == "__main__":
    main()
