"""`make demo`: the offline demo end to end, then where everything is and what to do next.

1. `dvc repro` — the default experiment (tiny-fp, reference app, virtual device, qa prompts) as a DVC pipeline;
2. `python -m pipeline -m experiment=quant-compare` — a Hydra sweep (fp/w8/w4 × qa/instruct), one MLflow parent;
3. `python -m pipeline.report --sweep …` — the comparison table and plots.

Everything runs on this machine: the "device" is the embedded virtual device, so every tok/s is this host's CPU
running a ~200 k-parameter model — labelled `virtual` everywhere, never a phone result.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def sh(*args: str) -> None:
    print(f"\n$ {' '.join(args)}", flush=True)
    r = subprocess.run(args)
    if r.returncode:
        print(f"demo: `{' '.join(args)}` failed (exit {r.returncode}) — see the message above; finished steps are"
              " kept, re-run `make demo` to continue", file=sys.stderr)
        raise SystemExit(r.returncode)


def main() -> None:
    root = Path.cwd()
    if not (root / "dvc.yaml").exists():
        raise SystemExit("demo: run it from the repository root (where dvc.yaml is)")
    py = sys.executable
    dvc = shutil.which("dvc") or str(Path(py).parent / "dvc")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    t0 = time.monotonic()
    sh(dvc, "repro")
    sweep = "demo-quant-compare-" + time.strftime("%Y%m%d-%H%M%S")
    sh(py, "-m", "pipeline", "-m", "experiment=quant-compare", f"hydra.sweep.dir=multirun/{sweep}")
    report = root / "reports" / sweep
    sh(py, "-m", "pipeline.report", "--sweep", sweep, "--out", str(report))
    print(f"""
Demo finished in {time.monotonic() - t0:.0f} s. What you have:
  metrics/score.json        the default run: throughput + quality (`dvc metrics show metrics/score.json`)
  metrics/prompts.csv       one row per prompt (`dvc plots show`; PNGs in metrics/plots/)
  artifacts/run/            responses.jsonl, telemetry.jsonl, app.log (the REPL transcript), run.json (provenance)
  multirun/{sweep}/   one directory per sweep job
  reports/{sweep}/    report.md + quality_vs_throughput.png + toks_vs_budget.png
  mlflow.db                 every run; browse with:  mlflow ui --backend-store-uri sqlite:///mlflow.db

All numbers above come from the VIRTUAL device (the reference app on this host's CPU, a tiny model), not a phone.
Next: a real phone (README "Real phone"); the off-topic diagnosis:
  python -m pipeline -m experiment=diagnose-offtopic""")


if __name__ == "__main__":
    main()
