"""Reference-app decode tok/s vs bare ``model.generate`` on the same prompts, in one run (goal: overhead <= 5 %).

Both sides: same model, same fed ids (simple_app's template), greedy, same stop ids, 1 torch thread. Decode tok/s =
(tokens - 1) / (time of last token - time of first token), so prefill (token by token in the app, batched in
``generate``) is excluded. The app side runs the real ``generate`` loop writing to /dev/null with a flush per token.
Also prints the app's start-up (load) time and a fresh-process time-to-banner.

Run: ``.venv/bin/python benchmarks/reference_app_overhead.py [--repeats 3]``
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


class _Stamps:
    """A transformers streamer that only timestamps each generated token (the first put() is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._seen_prompt = False

    def put(self, value) -> None:  # noqa: ANN001 - transformers' streamer protocol
        if self._seen_prompt:
            self.times.append(time.perf_counter())
        self._seen_prompt = True

    def end(self) -> None:
        pass


def _rate(times: list[float]) -> tuple[int, float]:
    return (len(times) - 1, times[-1] - times[0]) if len(times) > 1 else (0, 0.0)


def bench(model_dir: Path, prompts: list[str], max_new: int, repeats: int) -> dict:
    import torch

    from pipeline.guest import reference_app as ra

    eng = ra.load_engine(model_dir, threads=1, engine="torch")
    stop = sorted(eng.stop_ids)
    app_n = app_t = gen_n = gen_t = 0.0
    with open(os.devnull, "wb", buffering=0) as sink:
        for _ in range(repeats):
            for p in prompts:
                ids = eng.prompt_format("mobilequant").ids(p)
                eng.reset()
                r = ra.generate(eng, ids, sink, max_steps=len(ids) - 1 + max_new)
                n, t = _rate(r.token_times)
                app_n, app_t = app_n + n, app_t + t
                st = _Stamps()
                with torch.inference_mode():
                    out = eng.model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False,
                                             eos_token_id=stop, pad_token_id=0, streamer=st)
                assert out[0, len(ids):].tolist() == r.output_ids, "app and generate disagree on the answer"
                n, t = _rate(st.times)
                gen_n, gen_t = gen_n + n, gen_t + t
    return {"tokens": int(app_n), "app_tok_s": app_n / app_t, "generate_tok_s": gen_n / gen_t,
            "load_s": eng.load_s}


def time_to_banner(model_dir: Path, runs: int = 3) -> float:
    """Median wall time from process start to the first banner bytes (fresh session start-up cost)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "pipeline.guest.reference_app", str(model_dir)], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
        p.stdout.read(5)
        times.append(time.perf_counter() - t0)
        p.communicate(b"!exit\n")
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from transformers.utils import logging

    logging.disable_progress_bar()
    from pipeline.models import tiny

    qa = [e.prompt for e in tiny.load_examples("train")]
    print(f"{'model':<12} {'tokens':>7} {'app tok/s':>10} {'generate tok/s':>15} {'overhead %':>11} {'load s':>7}")
    for name, max_new in (("tiny-fp", 64), ("tiny-random", 200)):
        d = tiny.ensure_cached(name)
        r = bench(d, qa if name == "tiny-fp" else qa[:8], max_new, args.repeats)
        over = 100.0 * (r["generate_tok_s"] / r["app_tok_s"] - 1.0)
        print(f"{name:<12} {r['tokens']:>7} {r['app_tok_s']:>10.1f} {r['generate_tok_s']:>15.1f} {over:>11.1f} "
              f"{r['load_s']:>7.2f}")
    print(f"fresh process time-to-banner (tiny-fp, median of 3): {time_to_banner(tiny.ensure_cached('tiny-fp')):.2f} s")
    print("overhead % = generate/app - 1 (negative: the app loop is faster than model.generate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
