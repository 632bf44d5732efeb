"""`dvc repro` with nothing changed (push re-checks the device) beside `dvc status`, on the virtual device.

    python benchmarks/dvc_noop.py [--repeats 3] [--limit 2]

Copies this working tree into a temp dir (a fresh git repo, its own ODEVAL_ROOT, model cache and adb server port),
runs `dvc repro` once to build everything (tiny model, ``--limit`` prompts), then times, interleaved:

- ``dvc status`` (DVC's own check: hashes deps/outs, runs nothing),
- ``dvc repro`` with nothing changed: fetch/run/score are skipped by DVC; ``push`` is ``always_changed`` (DVC cannot
  see the phone), so it runs: process start + imports, device connect, one stat+manifest round trip per dir,
- ``python -m pipeline.stages.push`` alone (the part of the no-op repro that is ours).

Prints the medians and the goal (no-op repro <= 3 s). Everything it created is removed at the end (the virtual
device is stopped, the adb server killed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.device.adb import adb_path  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RUN_OUTPUTS = {"artifacts", "metrics", "dvc.lock", "outputs", "multirun", "reports", "mlflow.db", "mlruns"}


def copy_tree(dst: Path) -> None:
    """The working tree as git sees it (tracked + untracked-not-ignored files), uncommitted edits included."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        if rel.split("/", 1)[0] in _RUN_OUTPUTS:  # this checkout's own pipeline outputs: the copy builds its own
            continue
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dst, check=True)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench"],
                   cwd=dst, check=True)


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return dt, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=2, help="prompts for the initial build (prompts.limit)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="odeval-bench-dvc-"))
    repo = work / "repo"
    repo.mkdir()
    adb_port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "ODEVAL_ROOT": str(repo), "ODEVAL_CACHE": str(work / "cache"), "PYTHONPATH": str(repo),
           "ANDROID_ADB_SERVER_PORT": str(adb_port), "ADBUTILS_ADB_PATH": adb_path(), "ODEVAL_QUIET": "1",
           "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    dvc = [str(Path(venv_bin) / "dvc")]
    try:
        copy_tree(repo)
        params = repo / "params.yaml"
        params.write_text(params.read_text().replace("  limit: null", f"  limit: {args.limit}", 1))
        t, _ = timed([*dvc, "repro"], repo, env)
        print(f"first dvc repro (build tiny model, push, {args.limit} prompts, score): {t:.1f} s")
        times: dict[str, list[float]] = {"dvc status": [], "dvc repro (nothing changed)": [],
                                         "python -m pipeline.stages.push": []}
        out = ""
        for _ in range(args.repeats):
            times["dvc status"].append(timed([*dvc, "status"], repo, env)[0])
            dt, out = timed([*dvc, "repro"], repo, env)
            times["dvc repro (nothing changed)"].append(dt)
            times["python -m pipeline.stages.push"].append(
                timed([sys.executable, "-m", "pipeline.stages.push"], repo, env)[0])
        ran = [ln.strip() for ln in out.splitlines() if ln.startswith("Running stage")]
        print(f"no-op dvc repro ran: {', '.join(ran) or 'nothing'}")
        for k, v in times.items():
            print(f"{k:<34s} median {statistics.median(v):5.2f} s   (runs: {' '.join(f'{x:.2f}' for x in v)})")
        med = statistics.median(times["dvc repro (nothing changed)"])
        print(f"no-op dvc repro {med:.2f} s (goal <= 3 s: {'met' if med <= 3 else 'NOT met'}); "
              f"dvc status {statistics.median(times['dvc status']):.2f} s")
    finally:
        from pipeline.virtual import stop

        stop(repo / ".odeval" / "virtual")
        subprocess.run([adb_path(), "-P", str(adb_port), "kill-server"], capture_output=True, timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
