"""Scoring speed: 1 000 distinct responses, lexical families alone vs with relevance (bundled model on the numpy
encoder, and the same model through sentence-transformers at 1 and 2 torch threads for comparison).

Acceptance (issue "score"): <= 10 s for 1 000 responses with relevance on, model load excluded. Model load (hash
verification + encoder init) is timed separately. Responses are all distinct, so the embedding cache
for repeated texts gives no help here; prompts repeat as they do in a real run (a set of ~40 prompts x repeats).

    .venv/bin/python benchmarks/score_speed.py [--n 1000] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.quality import relevance as rel  # noqa: E402
from pipeline.quality.composite import score_items  # noqa: E402
from pipeline.run.prompts import load_prompts  # noqa: E402

SENTENCES = (
    "Ink is a liquid that contains pigments or dyes.", "Paris is the capital of France.",
    "Why did the chicken cross the road? To get to the other side.", "Water boils at 100 degrees Celsius.",
    "- apple\n- pear\n- plum", "the sky is blue because air scatters short wavelengths of sunlight.",
    "A spider has eight legs and two body segments.", "I am a helpful assistant and I can help you with that.",
    "北京是中国的首都。", "Bees make honey and beeswax in their hives.", "The French Revolution began in 1789.",
    "Sure! Here is a short poem about autumn leaves drifting down.", "Thank you!", "Octopuses have three hearts.",
)


def make_items(n: int, seed: int = 0) -> list[dict]:
    """n distinct (prompt, response) items over the project's prompt sets, with their references/rules."""
    root = Path(__file__).resolve().parents[1] / "prompts"
    prompts = [p for f in sorted(root.glob("*.jsonl")) for p in load_prompts(f)]
    rng = random.Random(seed)
    items = []
    for i in range(n):
        p = prompts[i % len(prompts)]
        body = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 6)))
        items.append({**p.to_item(), "id": f"{p.id}#{i}", "response": f"{body} ({i})", "eos": rng.random() < 0.8,
                      "truncated": False})
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts for the "
                    "sentence-transformers comparison ('' = skip it)")
    args = ap.parse_args()
    items = make_items(args.n)
    t = time.perf_counter()
    score_items(items, relevance=False)
    lexical = time.perf_counter() - t
    t = time.perf_counter()
    rel.load_model()
    load = time.perf_counter() - t
    n_tok = sum(len(ids) for ids in rel.load_model().token_ids([it["response"] for it in items]))
    print(f"responses: {args.n} (distinct, {n_tok / args.n:.0f} wordpiece tokens on average), prompts from "
          f"prompts/*.jsonl, CPU cores: {os.cpu_count()}, load average now: {os.getloadavg()[0]:.1f}")
    print("(wall >> CPU/threads means other processes were competing for the cores)")
    print(f"model load (sha256 verify + numpy encoder init, once per process): {load:6.2f} s")
    print(f"lexical families only (--no-relevance):                          {lexical:6.2f} s")
    _timed(items, lexical, "numpy encoder (default)", None)
    if args.threads:
        import torch

        st_dir = str(rel.bundled_model_dir())
        t = time.perf_counter()
        rel.load_model(st_dir)
        print(f"sentence-transformers import + load (same model):                {time.perf_counter() - t:6.2f} s")
        for th in [int(x) for x in args.threads.split(",")]:
            torch.set_num_threads(th)
            _timed(items, lexical, f"sentence-transformers, {th} thread(s)", st_dir)


def _timed(items: list[dict], lexical: float, label: str, model: str | None) -> None:
    t, c = time.perf_counter(), time.process_time()
    rows = score_items(items, relevance=True, embedding_model=model)
    took, cpu = time.perf_counter() - t, time.process_time() - c
    verdict = "PASS" if took <= 10 else "FAIL"
    print(f"all families with relevance, {label:38s} {took:6.2f} s wall, {cpu:6.2f} s CPU  "
          f"({took / len(items) * 1000:.1f} ms/response, x{took / lexical:.0f} vs lexical)  <=10 s: {verdict}")
    assert len(rows) == len(items)

if __name__ == "__main__":
    main()
