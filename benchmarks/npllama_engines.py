"""Reference app engines side by side: numpy (pipeline/guest/npllama.py) vs torch (transformers), one run.

Measures (1) fresh-process start -> full banner on stdout (what every prompt pays in "fresh" sessions), median of
N runs per engine, runs interleaved so both see the same machine load; (2) decode tok/s on tiny-fp through the app's
real ``generate`` loop = (answer tokens - 1) / (last - first answer token time), prefill excluded, summed over the
train qa prompts; (3) steady-state forward steps/s (tiny-fp, 512 tokens from position 0). Prints numpy/torch ratios.

Run: ``.venv/bin/python benchmarks/npllama_engines.py [--runs 5] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENGINES = ("numpy", "torch")


def time_to_banner(model_dir: Path, engine: str) -> float:
    """Wall time from spawning the app to having read its whole banner."""
    from pipeline.guest.reference_app import BANNER

    want = len(BANNER.encode())
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "pipeline.guest.reference_app", str(model_dir)], cwd=REPO,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(REPO), "ODEVAL_ENGINE": engine})
    got = b""
    while len(got) < want and (chunk := p.stdout.read1(4096)):
        got += chunk
    dt = time.perf_counter() - t0
    p.communicate(b"!exit\n", timeout=60)
    if not got.startswith(BANNER.encode()):
        raise RuntimeError(f"{engine}: unexpected start of output {got[:80]!r}")
    return dt


def decode_rate(model_dir: Path, engine: str, prompts: list[str], repeats: int) -> tuple[int, float, list[int]]:
    """(tokens timed, decode tok/s, first prompt's answer ids) through the app's generate loop."""
    from pipeline.guest import reference_app as ra

    eng = ra.load_engine(model_dir, threads=1, engine=engine)
    n_tot, t_tot, first = 0, 0.0, []
    with open(os.devnull, "wb", buffering=0) as sink:
        for _ in range(repeats):
            for i, p in enumerate(prompts):
                eng.reset()
                r = ra.generate(eng, eng.prompt_format("mobilequant").ids(p), sink)
                first = r.output_ids if i == 0 else first
                if len(r.token_times) > 1:
                    n_tot += len(r.token_times) - 1
                    t_tot += r.token_times[-1] - r.token_times[0]
    return n_tot, n_tot / t_tot, first


def forward_rate(model_dir: Path, engine: str, steps: int = 512) -> float:
    """Engine.forward calls per second over ``steps`` positions from 0 (tokens cycle through the vocabulary)."""
    from pipeline.guest import reference_app as ra

    eng = ra.load_engine(model_dir, threads=1, engine=engine)
    eng.forward(3)
    t0 = time.perf_counter()
    for i in range(steps):
        eng.forward(3 + i % (len(eng.codec) - 3))
    return steps / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per engine for time-to-banner")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the qa prompts for decode tok/s")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from pipeline.models import tiny

    d = tiny.ensure_cached("tiny-fp")
    banner: dict[str, list[float]] = {e: [] for e in ENGINES}
    for _ in range(args.runs):
        for e in ENGINES:
            banner[e].append(time_to_banner(d, e))
    prompts = [e.prompt for e in tiny.load_examples("qa-train")]
    dec = {e: decode_rate(d, e, prompts, args.repeats) for e in ENGINES}
    if dec["numpy"][2] != dec["torch"][2]:
        raise RuntimeError("numpy and torch engines disagree on the first answer")
    fwd = {e: forward_rate(d, e) for e in ENGINES}
    med = {e: statistics.median(banner[e]) for e in ENGINES}
    print(f"tiny-fp ({d.name}), 1 thread, {args.runs} fresh processes per engine, {len(prompts)} qa prompts "
          f"x {args.repeats}")
    print(f"{'metric':<34} {'numpy':>10} {'torch':>10} {'numpy/torch':>12}")
    print(f"{'start -> banner, median s':<34} {med['numpy']:>10.3f} {med['torch']:>10.3f} "
          f"{med['numpy'] / med['torch']:>12.3f}")
    print(f"{'  (min .. max s)':<34} {min(banner['numpy']):>4.2f}..{max(banner['numpy']):<4.2f} "
          f"{min(banner['torch']):>4.2f}..{max(banner['torch']):<4.2f}")
    print(f"{'decode tok/s (generate loop)':<34} {dec['numpy'][1]:>10.0f} {dec['torch'][1]:>10.0f} "
          f"{dec['numpy'][1] / dec['torch'][1]:>12.2f}   ({dec['numpy'][0]} tokens timed)")
    print(f"{'forward steps/s (512 positions)':<34} {fwd['numpy']:>10.0f} {fwd['torch']:>10.0f} "
          f"{fwd['numpy'] / fwd['torch']:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
