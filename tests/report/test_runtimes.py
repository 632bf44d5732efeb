"""The report's "Runtimes compared" and llama-bench sections against a REAL MLflow store holding the
``experiment=runtime-compare`` design: app=reference vs app=llama-cpp × model=smollm2-q4 × prompts=qa,instruct, plus
the float reference (model=smollm2-ref app=reference) on qa only.

Each run's metrics are what the score stage computes from its synthetic rows (pipeline.score.summary and
pipeline/score/llama_cpp.py, flattened as MLflow gets them), so the names the report reads are the names logged.
Answers are built so every agreement has a known value: per prompt i, ``REFAPP[i]`` / ``LLAMA[i]`` say whether the
reference app's / llama.cpp's answer is the float model's ("base") or a diverged one ("alt", "other")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.report.build import build_report, report_from_mlflow
from pipeline.score import summary
from pipeline.score.headline import headline_metrics
from pipeline.score.llama_cpp import app_counters_block, bench_block
from pipeline.tracking.tags import bench_tags
from pipeline.tracking.views import flat_metrics
from tests.helpers.runtime_runs import bench_json, perf, row

EXPERIMENT = "odeval-runtime-compare"
SWEEP = "runtime-compare"
N = 6
REFAPP = ["base", "base", "base", "alt", "alt", "alt"]    # vs the float model: exact on 3 of 6
LLAMA = ["base", "base", "other", "alt", "alt", "other"]  # vs reference app: 4 of 6; vs the float model: 2 of 6


def answer(kind: str, i: int, prompts: str) -> str:
    words = f"{prompts} answer {i} : the capital of country {i} is city {i} .".split()
    return {"base": " ".join(words), "alt": " ".join([*words[:4], "zebra", "ink", str(i)]),
            "other": f"something else entirely {i}"}[kind]


def run_rows(app: str, model: str, prompts: str) -> list[dict]:
    kinds = ["base"] * N if model == "smollm2-ref" else REFAPP if app == "reference" else LLAMA
    if app == "llama-cpp":  # llama.cpp's eval rate 20 tok/s, the host's 19: host ÷ app = 0.95
        return [row(f"{prompts}{i}", answer(k, i, prompts), ttft_s=0.4, decode_tok_s=19.0,
                    app_counters=perf(eval_tokens=29, eval_ms=1450.0)) for i, k in enumerate(kinds)]
    return [row(f"{prompts}{i}", answer(k, i, prompts), ttft_s=0.25, decode_tok_s=30.0, app_tok_s=20.0 + i)
            for i, k in enumerate(kinds)]


def scored(rows: list[dict], quality: float, app: str, bench: dict | None) -> dict:
    """score.json as the score stage builds it from these rows (quality given per prompt, not scored here)."""
    scores = [{"id": r["prompt_id"], "quality_score": quality + 0.02 * i, "on_topic": True}
              for i, r in enumerate(rows)]
    score = summary.summarize_run(rows, summary.per_prompt(rows, scores, {}, []), [], [], device_kind="virtual",
                                  bandwidth_gb_s=None, bandwidth_reason="virtual", weight_bytes=None)
    counters, _ = app_counters_block(rows, app == "llama-cpp")
    if counters:
        score["app_counters"] = counters
    if bench:
        score["bench"] = bench_block(bench)
    return score | {"scores": scores}


def log(uri: str, parent: str, root: Path, app: str, model: str, prompts: str, bench: dict | None = None) -> str:
    rows = run_rows(app, model, prompts)
    score = scored(rows, 0.5 if app == "reference" else 0.4, app, bench)
    d = root / f"{app}-{model}-{prompts}"
    d.mkdir()
    (d / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "quality.jsonl").write_text("".join(json.dumps(s) + "\n" for s in score.pop("scores")))
    params = {"model": {"name": model}, "prompts": {"name": prompts}, "tag": SWEEP,
              "app": {"name": app, "protocol": "llama-cpp" if app == "llama-cpp" else "simple_app"}}
    return tracking.log_run(tracking_uri=uri, experiment=EXPERIMENT, run_key=d.name, params=params,
                            metrics={**headline_metrics(score), **flat_metrics(score)},
                            tags={"device.kind": "virtual", "sweep_id": SWEEP, **bench_tags(score)},
                            artifacts=[d / "responses.jsonl", d / "quality.jsonl"], parent_run_id=parent,
                            run_name=d.name)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("runtimes")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent = tracking.get_or_create_parent(tracking_uri=uri, experiment=EXPERIMENT, sweep_id=SWEEP)
    for prompts in ("qa", "instruct"):
        log(uri, parent, root, "reference", "smollm2-q4", prompts)
        log(uri, parent, root, "llama-cpp", "smollm2-q4", prompts,
            bench_json() if prompts == "qa" else bench_json(error="model not found"))
    log(uri, parent, root, "reference", "smollm2-ref", "qa")
    return report_from_mlflow(uri, root / "out", sweep=SWEEP)


def section(rep, title: str) -> str:
    text = rep.report_md.read_text()
    assert title in text, text
    return text.split(title, 1)[1].split("\n## ", 1)[0]


def table(text: str, after: str = "") -> list[list[str]]:
    """The data cells of the first Markdown table in ``text`` after ``after``."""
    lines = (text.split(after, 1)[1] if after else text).splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[start + 2:end]]


def test_both_runtimes_sit_side_by_side_per_prompt_set(report) -> None:
    rows = table(section(report, "## Runtimes compared"))
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("instruct", "llama-cpp", "smollm2-q4"), ("instruct", "reference", "smollm2-q4"),
        ("qa", "llama-cpp", "smollm2-q4"), ("qa", "reference", "smollm2-q4"),
        ("qa", "reference", "smollm2-ref (float reference)")]
    llama, ref_app = rows[2], rows[3]
    assert llama[4] == "19.00" and ref_app[4] == "30.00"  # decode tok/s, host-timed
    assert llama[5] == "30.00" and ref_app[5] == "48.00"  # prefill = 12 prompt tokens / TTFT (0.4 s, 0.25 s)
    assert llama[6] == "120.00" and ref_app[6] == "—"  # llama.cpp's own prompt eval; simple_app has none
    assert llama[8] == "0.950 (host decode ÷ llama.cpp eval)"
    assert ref_app[8].endswith("(host ÷ app tok/s, median)") and ref_app[8] != "—"
    assert llama[9].startswith("0.450 [") and ref_app[9].startswith("0.550 [")  # quality with its CI


def test_quality_ci_is_the_logged_score_ci(report) -> None:
    rec = next(r for r in report.records if r.params["app.name"] == "llama-cpp" and r.params["prompts.name"] == "qa")
    rows = table(section(report, "## Runtimes compared"))
    assert rows[2][9] == f"0.450 [{rec.metric('q_lo'):.3f}, {rec.metric('q_hi'):.3f}]"
    assert rec.metric("q_lo") < 0.45 < rec.metric("q_hi")


def test_answers_of_the_two_runtimes_are_compared_on_the_same_prompts(report) -> None:
    rows = table(section(report, "## Runtimes compared"), "### Answers: runtime against runtime")
    assert len(rows) == 2  # one pair per prompt set
    for r in rows:
        assert (r[1], r[2]) == ("llama-cpp", "reference") and r[3] == f"{N} ({N} / {N})"
        assert r[4] == f"{4 / 6:.2f}" and 0.3 < float(r[5]) < 1.0 and r[8] == ""


def test_each_runtime_against_the_float_reference_or_how_to_add_it(report) -> None:
    rows = table(section(report, "## Runtimes compared"), "### Answers: each runtime against the float reference")
    by = {(r[0], r[1]): r for r in rows}
    assert by[("qa", "llama-cpp")][5] == f"{2 / 6:.2f}" and by[("qa", "reference")][5] == f"{3 / 6:.2f}"
    assert by[("qa", "llama-cpp")][3].endswith("(reference)") and by[("qa", "llama-cpp")][4] == str(N)
    missing = by[("instruct", "llama-cpp")][7]
    assert "no `smollm2-ref` run on prompts=instruct" in missing and "`model=smollm2-ref app=reference`" in missing
    assert ("qa", "reference") in by and len(rows) == 4  # the float reference is not compared with itself


def test_bench_section_labels_the_synthetic_numbers_beside_the_per_prompt_ones(report) -> None:
    text = section(report, "## llama-bench: the synthetic benchmark")
    assert "synthetic benchmark" in text and "host-timed" in text
    rows = {r[-1]: r for r in table(text)}
    assert len(rows) == 2  # the two llama-cpp runs; the reference app runs had no llama-bench
    ok = next(r for r in rows.values() if r[2] != "—")
    assert ok[2] == "pp512 310.00 ± 10.00" and ok[3] == "tg128 46.00 ± 1.00"
    assert (ok[4], ok[5], ok[6], ok[7], ok[8], ok[9]) == ("19.00", "20.00", "3", "0.5", "2", "b4567 (a1b2c3d)")
    failed = next(r for r in rows.values() if r[2] == "—")
    assert failed[3] == "—" and failed[10] == "model not found"


def test_a_runtime_missing_on_a_prompt_set_is_named(report, tmp_path: Path) -> None:
    recs = [r for r in report.records
            if not (r.params["app.name"] == "llama-cpp" and r.params["prompts.name"] == "instruct")]
    text = build_report(recs, tmp_path, title="t").report_md.read_text()
    assert "prompts.name=instruct: no `app.name=llama-cpp` run" in text
    assert "prompts.name=qa: no" not in text


def test_one_runtime_has_no_runtimes_section_and_no_bench_no_bench_section(report, tmp_path: Path) -> None:
    recs = [r for r in report.records if r.params["app.name"] == "reference"]
    text = build_report(recs, tmp_path, title="t").report_md.read_text()
    assert "## Runtimes compared" not in text and "## llama-bench" not in text


def test_the_float_reference_on_the_reference_app_is_preferred(report, tmp_path: Path) -> None:
    """Two smollm2-ref runs on qa: the one with app=reference is the float reference, even when older."""
    from dataclasses import replace

    ref = next(r for r in report.records if r.params["model.name"] == "smollm2-ref")
    newer = replace(ref, run_id="f" * 32, start_time=ref.start_time + 10**6,
                    params=ref.params | {"app.name": "llama-cpp", "app.protocol": "llama-cpp"})
    rep = build_report([*report.records, newer], tmp_path, title="t")
    rows = table(section(rep, "## Runtimes compared"), "### Answers: each runtime against the float reference")
    assert {r[3] for r in rows if r[0] == "qa"} == {f"{ref.run_id[:8]} (reference)"}
