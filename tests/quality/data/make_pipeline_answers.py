"""Collect REAL answers from this project's own pipeline runs for the labelled set (NOT part of the test run).

Why: the scorer must be judged on what odeval's runs actually produce — smollm2-w3's word salad, w4's loops, the
as-is app's template leaks, q4's right, wrong and rambling answers — not on invented strings. This script is how
``tests/quality/pipeline_labelled.jsonl`` got its ``response`` fields; labels are added by hand under the written
rule in ``tests/quality/data/README.md`` (the script never labels; ``--labels`` only carries earlier hand labels
over to answers whose text is unchanged, keyed by prompt + response).

    # 1. run the pipeline offline on the virtual device (~25 min idle on 2 cores, greedy so reproducible):
    python tests/quality/data/make_pipeline_answers.py run
    # 2. collect every measured answer of those job dirs (deduplicated), carry labels over, record surprisals:
    python tests/quality/data/make_pipeline_answers.py collect multirun/<sweep>/job* \\
        --labels tests/quality/pipeline_labelled.jsonl --out /tmp/pipeline_raw.jsonl
    python tests/quality/data/make_pipeline_answers.py record tests/quality/pipeline_labelled.jsonl \\
        tests/quality/smollm2_labelled.jsonl --out tests/quality/data/fluency_smollm2-ref.jsonl

``record`` writes the reference LM's surprisal of every answer (pipeline/quality/fluency.py, smollm2-ref) so the
tests can score both labelled sets without a 135 M-parameter forward per answer; a test re-computes a sample live
on demand (``-m slow``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]

# The sweeps behind the set: the off-topic diagnosis (9 conditions × 16 prompts at 40 tokens) plus targeted runs
# whose answers the diagnosis has too few of (w3 salad and w4 loops under the model's own template, q4 rambling).
SWEEPS: tuple[tuple[str, ...], ...] = (
    ("experiment=diagnose-offtopic", "tag=labelset-32"),
    ("model=smollm2-w3,smollm2-w4", "prompts=qa", "app.template=hf-chat", "session=fresh", "sequence=s128",
     "tag=labelset-32"),
    ("model=smollm2-q4", "prompts=qa,instruct", "app.template=mobilequant", "session=fresh", "sequence=s256",
     "tag=labelset-32"),
)
KEEP = ("id", "prompt", "reference", "keywords", "rules", "lang", "response", "eos", "truncated")


def run_sweeps() -> None:
    """Run every sweep of SWEEPS with this checkout's pipeline (offline: package models, virtual device)."""
    for overrides in SWEEPS:
        cmd = [sys.executable, "-m", "pipeline", "-m", *overrides]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _condition(job: Path) -> dict[str, Any]:
    """What produced a job's answers, from its composed params (model, template, past-end read, session, budget)."""
    import yaml

    cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text(encoding="utf-8"))
    run = json.loads((job / "artifacts" / "run" / "run.json").read_text(encoding="utf-8"))
    return {"model": cfg["model"]["name"], "template": cfg["app"]["template"],
            "past_end_token": cfg["app"].get("past_end_token"), "session": cfg["session"]["mode"],
            "max_new_tokens": cfg["sequence"]["max_new_tokens"], "prompt_set": cfg["prompts"]["name"],
            "decoding": "greedy", "device": "virtual (reference app, numpy engine)",
            "git_commit": (run.get("git") or {}).get("commit"), "run_key": run.get("run_key")}


def collect(jobs: list[Path], labels: Path | None) -> list[dict[str, Any]]:
    """Every measured, non-failed, non-empty answer of ``jobs`` once per (prompt, response), first job wins;
    earlier hand labels carried over by the same key (the label is about the text, whatever run produced it)."""
    from pipeline.quality.fluency import text_key

    old = {text_key(r["prompt"], r["response"]): r for r in _jsonl(labels)} if labels and labels.exists() else {}
    out: dict[str, dict[str, Any]] = {}
    for job in jobs:
        cond = _condition(job)
        prompts = {p["id"]: p for p in _jsonl(job / "artifacts" / "run" / "prompts.jsonl")}
        for r in _jsonl(job / "artifacts" / "run" / "responses.jsonl"):
            if r.get("warmup") or r.get("timed_out") or r.get("crashed") or r.get("error"):
                continue
            if not (r.get("response") or "").strip():  # empty: 0 by definition, would only inflate the AUC
                continue
            flags = {k: r[k] for k in ("prompt", "eos", "truncated")}
            item = {**prompts[r["prompt_id"]], "id": r["prompt_id"], **flags, "response": r["response"]}
            key = text_key(item["prompt"], item["response"])
            if key in out:
                continue
            row = {k: item.get(k) for k in KEEP} | {"condition": cond}
            if key in old:
                row |= {k: old[key][k] for k in ("label", "label_rule", "kind") if k in old[key]}
            out[key] = row
    return list(out.values())


def record(files: list[Path], model: str) -> list[dict[str, Any]]:
    """Surprisal of every answer of ``files`` under the reference LM ``model`` (a conf/model preset or dir)."""
    from pipeline.quality.fluency import load_reference, reference_dir, text_key

    lm_dir = reference_dir(model)
    lm = load_reference(lm_dir, model)
    meta = json.loads((lm_dir / "model.json").read_text(encoding="utf-8"))
    rows, seen = [], set()
    for path in files:
        for r in _jsonl(path):
            key = text_key(r["prompt"], r["response"])
            if key in seen:
                continue
            seen.add(key)
            nll, n = lm.nll(r["prompt"], r["response"])
            rows.append({"key": key, "nll": nll, "tokens": n})
    head = {"reference_lm": model, "source_sha256": meta.get("source_sha256"), "variant": meta.get("variant"),
            "converter_version": meta.get("converter_version"), "max_answer_tokens": lm.max_answer_tokens}
    return [{"meta": head}, *rows]


def _write(rows: list[dict[str, Any]], out: Path) -> None:
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{out}: {len(rows)} lines")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="run the sweeps (SWEEPS) offline")
    c = sub.add_parser("collect", help="collect answers from job dirs")
    c.add_argument("jobs", nargs="+", type=Path)
    c.add_argument("--labels", type=Path, default=None, help="labelled file whose labels carry over")
    c.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("record", help="record reference-LM surprisals of labelled files")
    r.add_argument("files", nargs="+", type=Path)
    r.add_argument("--model", default="smollm2-ref")
    r.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        run_sweeps()
    elif args.cmd == "collect":
        _write(collect(sorted(args.jobs), args.labels), args.out)
    else:
        _write(record(args.files, args.model), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
