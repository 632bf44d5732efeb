"""Screenshots of the MLflow pages a user opens, taken the way a user sees them (headless Chromium), to check that
the runs table, a run page and a sweep parent read well: `make screenshots` or

    python benchmarks/mlflow_screenshots.py [--store sqlite:///mlflow.db] [--out reports/screenshots]

It starts `mlflow ui` on a free port over the store, opens the link `make ui` prints (the runs table with the
headline columns), the newest run's page and, when there is one, a sweep parent's page, and writes one PNG each.
Needs Chromium (`apt install chromium`); says so in one line when it is missing. Not a benchmark: it lives here
with the other scripts one runs by hand, outside the test suite's time budget (a slow test drives it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.tracking import experiment_ui_path  # noqa: E402
from tests.helpers.device import free_port  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def start_ui(store: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise SystemExit(f"mlflow ui did not answer on port {port} within 120 s")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def shoot(chrome: str, url: str, png: Path, size: str = "1600,1000") -> Path:
    """One page as Chromium renders it after its scripts ran (virtual time lets the React app load its data)."""
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", "--virtual-time-budget=20000", f"--screenshot={png}", url],
                   capture_output=True, timeout=180, check=True)
    if not png.exists() or png.stat().st_size < 5000:
        raise SystemExit(f"{png}: Chromium wrote no page (url {url})")
    return png


def pages(store: str) -> dict[str, str]:
    """name -> UI path: the runs table (what `make ui` prints), the newest run, a sweep parent if any."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("odeval")
    if exp is None:
        raise SystemExit(f"{store}: no 'odeval' experiment yet — run `make demo` first")
    out = {"runs-table": experiment_ui_path(store, "odeval") or f"#/experiments/{exp.experiment_id}"}
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=50)
    leaf = next((r for r in runs if r.data.tags.get("odeval.role") != "sweep-parent"), None)
    parent = next((r for r in runs if r.data.tags.get("odeval.role") == "sweep-parent"), None)
    for name, run in (("run-page", leaf), ("sweep-parent", parent)):
        if run is not None:
            out[name] = f"#/experiments/{exp.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    return out


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="sqlite:///mlflow.db", help="MLflow tracking URI (default: this checkout's)")
    ap.add_argument("--out", type=Path, default=Path("reports/screenshots"))
    args = ap.parse_args(argv)
    chrome = browser()
    if chrome is None:
        raise SystemExit("no Chromium found (looked for " + ", ".join(BROWSERS) + "): apt install chromium")
    port = free_port()
    ui = start_ui(args.store, port)
    try:
        shots = [shoot(chrome, f"http://127.0.0.1:{port}/{path}", args.out / f"{name}.png")
                 for name, path in pages(args.store).items()]
    finally:
        stop(ui)
    for p in shots:
        print(f"wrote {p}")
    return shots


if __name__ == "__main__":
    main()
