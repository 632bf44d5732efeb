"""IFEval scored as the benchmark defines it (pipeline/quality/ifeval.py).

The equivalence test: recorded real SmolLM2 answers (tests/quality/data/ifeval_smollm2_answers.jsonl, from the
virtual device) are scored (1) the way the checker's authors run it — its own ``read_prompt_list`` on the pinned
``input_data.jsonl``, a prompt→response dict, its own ``test_instruction_following_strict/loose`` — and (2) the
way odeval does — the run stage's loader, the row through prompts.jsonl (JSON), ``score_rows`` — and every
per-instruction verdict must be identical, and equal to the verdicts recorded with the answers (so a change of
nltk, langdetect or the Punkt parameters that moves a verdict fails here).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.config import compose, to_config
from pipeline.quality import ifeval
from pipeline.quality.ifeval import Verdict, cluster_bootstrap, judge, score_rows, summarize, wilson
from pipeline.run.outcomes import failure_kind
from pipeline.run.prompt_sources import load_prompt_source

ANSWERS = Path(__file__).parent / "data" / "ifeval_smollm2_answers.jsonl"
PUNKT_TYPES = {"length_constraints:number_sentences", "change_case:capital_word_frequency"}


@pytest.fixture(scope="module")
def recorded() -> list[dict]:
    return [json.loads(line) for line in ANSWERS.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def items() -> dict[str, dict]:
    """Every IFEval prompt as the run stage writes it to prompts.jsonl (through JSON, as the score stage reads it)."""
    cfg = to_config(compose(["prompts=ifeval"]))
    prompts, _ = load_prompt_source(replace(cfg.prompts, stride=1), Path("."))
    return {p.id: json.loads(json.dumps(p.to_item() | {"set": p.set_name, "tags": list(p.tags)})) for p in prompts}


def test_recorded_answers_exercise_what_can_go_wrong(recorded):
    types = Counter(i for r in recorded for i in r["instruction_id_list"])
    assert len(recorded) >= 60 and len(types) >= 20, types
    for t in (*PUNKT_TYPES, "language:response_language", "combination:repeat_prompt"):
        assert types[t] >= 2, t
    punkt_verdicts = {ok for r in recorded for i, ok in zip(r["instruction_id_list"], r["strict"], strict=True)
                      if i in PUNKT_TYPES}
    assert punkt_verdicts == {True, False}  # sentence counts both pass and fail on these answers
    assert any(r["truncated"] for r in recorded) and not all(r["truncated"] for r in recorded)
    assert any(a != b for r in recorded for a, b in zip(r["strict"], r["loose"], strict=True))  # loose differs


def test_verdicts_equal_the_reference_run_as_its_authors_run_it(recorded, items):
    ref = ifeval.reference()
    pinned = ifeval.checker_dir() / "data" / "input_data.jsonl"
    inputs = {inp.key: inp for inp in ref.read_prompt_list(str(pinned))}
    table = dict(items)
    rows = [{"prompt_id": f"ifeval-{r['key']}", "response": r["response"], "truncated": r["truncated"]}
            for r in recorded]
    for n, (r, row) in enumerate(zip(recorded, rows, strict=True)):
        row["prompt_id"] = f"{row['prompt_id']}@{n}"  # one row per recorded answer (models share prompts)
        table[row["prompt_id"]] = items[f"ifeval-{r['key']}"]
    _, _, ours = score_rows(rows, table, failure_kind)
    assert len(ours) == len(recorded)
    for r, got in zip(recorded, ours, strict=True):
        inp = inputs[r["key"]]
        answer = {inp.prompt: r["response"]}
        want_strict = ref.test_instruction_following_strict(inp, answer).follow_instruction_list
        want_loose = ref.test_instruction_following_loose(inp, answer).follow_instruction_list
        where = f"{r['model']} ifeval-{r['key']}"
        assert got["instruction_id_list"] == inp.instruction_id_list, where
        assert (got["strict"], got["loose"]) == (want_strict, want_loose), where
        assert (got["strict"], got["loose"]) == (r["strict"], r["loose"]), f"{where}: differs from the recording"


def test_a_failed_answer_follows_nothing_and_is_counted(items):
    rows = [{"prompt_id": "ifeval-1000", "response": "partial text, cut", "crashed": True, "truncated": False},
            {"prompt_id": "ifeval-1001", "response": "No commas here at all.", "truncated": True}]
    block, columns, verdicts = score_rows(rows, items, failure_kind, {"package": "x"})
    assert verdicts[0]["strict"] == [False] * 3 and verdicts[1]["strict"] == [True]
    assert block["failed"]["prompt_ids"] == ["ifeval-1000"] and block["truncated"]["prompt_ids"] == ["ifeval-1001"]
    assert block["prompt_strict"]["k"] == 1 and block["prompt_strict_complete"]["n"] == 0
    assert columns["ifeval-1001"]["ifeval_strict"] == 1.0 and columns["ifeval-1000"]["ifeval_missed_strict"]
    assert block["source"] == {"package": "x"} and block["checker"]["langdetect_seed"] == 0


def test_loose_forgives_a_first_line_and_markdown_stars(items):
    row = items["ifeval-1001"]["ifeval"]  # punctuation:no_comma
    assert judge(row, "Sure, here it is:\nA plan without any commas.").strict == (False,)
    assert judge(row, "Sure, here it is:\nA plan without any commas.").loose == (True,)


def test_score_rows_ignores_runs_without_ifeval_prompts():
    assert score_rows([{"prompt_id": "a", "response": "x"}], {"a": {"id": "a"}}, failure_kind) == (None, {}, [])


def test_wilson_interval_known_values():
    lo, hi = wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    assert wilson(0, 2)[0] == 0.0 and round(wilson(0, 2)[1], 4) == 0.6576
    assert wilson(3, 3)[1] == 1.0 and wilson(0, 0) is None


def test_summary_counts_prompts_instructions_and_types():
    vs = [Verdict("a", 1, ("x:p", "y:q"), (True, True), (True, True)),
          Verdict("b", 2, ("x:p",), (False,), (True,)),
          Verdict("c", 3, ("x:p", "z:r", "y:q"), (True, False, True), (True, False, True))]
    s = summarize(vs, truncated=["c"])
    assert (s["prompt_strict"]["k"], s["prompt_strict"]["n"]) == (1, 3)
    assert (s["prompt_loose"]["k"], s["prompt_loose"]["n"]) == (2, 3)
    assert (s["instruction_strict"]["k"], s["instruction_strict"]["n"]) == (4, 6)
    assert (s["instruction_loose"]["k"], s["instruction_loose"]["n"]) == (5, 6)
    assert s["per_instruction"]["x:p"]["strict"]["k"] == 2 and s["per_instruction"]["x:p"]["strict"]["n"] == 3
    assert s["per_instruction"]["z:r"]["loose"]["value"] == 0.0
    assert s["prompt_strict_complete"]["n"] == 2 and s["truncated"]["rate"] == pytest.approx(1 / 3)
    for key in ("prompt_strict", "instruction_loose"):
        assert s[key]["ci_low"] <= s[key]["value"] <= s[key]["ci_high"]


def test_the_instruction_level_interval_resamples_prompts():
    pairs = [(2, 2), (0, 1), (1, 3), (3, 3), (0, 2)]
    a, b = cluster_bootstrap(pairs), cluster_bootstrap(pairs)
    assert a == b and a[0] < 6 / 11 < a[1]
    assert cluster_bootstrap([(1, 1)]) is None  # one prompt: no spread to resample


def test_a_changed_checker_file_is_refused(monkeypatch):
    monkeypatch.setattr(ifeval, "_reference", None)
    monkeypatch.setitem(ifeval.CHECKER_SHA256, "instructions.py", "0" * 64)
    with pytest.raises(ifeval.IFEvalError, match="is not the pinned checker's"):
        ifeval.reference()
