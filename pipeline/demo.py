"""`make demo`: the offline demo end to end, then where everything is and what to do next.

Runs `dvc repro` on the default experiment (tiny model, reference app, virtual device) and prints the metrics.
Everything runs on this machine: the "device" is the embedded virtual device and its tok/s are the host CPU's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def sh(*args: str) -> None:
    print(f"\n$ {' '.join(args)}", flush=True)
    r = subprocess.run(args)
    if r.returncode:
        print(f"demo: `{' '.join(args)}` failed (exit {r.returncode}) — see the message above", file=sys.stderr)
        raise SystemExit(r.returncode)


def main() -> None:
    root = Path.cwd()
    if not (root / "dvc.yaml").exists():
        raise SystemExit("demo: run it from the repository root (where dvc.yaml is)")
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    sh(dvc, "repro")
    sh(dvc, "metrics", "show")
    print(f"""
Demo finished. What you have:
  metrics/score.json          throughput + quality (dvc metrics show)
  metrics/prompts.csv         one row per prompt (dvc plots show; PNGs in metrics/plots/)
  artifacts/run/              responses.jsonl, telemetry.jsonl, app.log (the REPL transcript), run.json
  {root / 'mlflow.db'}   MLflow store: mlflow ui --backend-store-uri sqlite:///mlflow.db

These numbers come from the VIRTUAL device: the reference app on this host's CPU, not a phone.
Next: a real phone (README "Real phone"), sweeps (README "Sweeps").""")


if __name__ == "__main__":
    main()
