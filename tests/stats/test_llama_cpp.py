"""score.json's llama.cpp blocks (pipeline/score/llama_cpp.py): llama.cpp's own counters beside the host timing,
llama-bench's synthetic numbers, their terminal lines and headline entries — nulls with reasons, never estimates."""

from __future__ import annotations

import pytest

from pipeline.score.headline import headline
from pipeline.score.llama_cpp import APP_COUNTERS_SOURCE, app_counters_block, bench_block, is_llama_cpp
from pipeline.score.scoring import summary_lines
from pipeline.tracking.views import flat_metrics
from tests.helpers.runtime_runs import bench_json, perf, row

A = row("a", "x", decode_tok_s=19.0, n_prompt_tokens=12,
        app_counters=perf(eval_tokens=29, eval_ms=1450.0, prompt_eval_tokens=12, prompt_eval_ms=100.0, load_ms=300.0))
B = row("b", "y", decode_tok_s=28.5, n_prompt_tokens=19,
        app_counters=perf(eval_tokens=30, eval_ms=1000.0, prompt_eval_tokens=20, prompt_eval_ms=100.0, load_ms=500.0))


def test_counters_are_means_of_per_row_rates_and_the_host_is_compared_on_the_same_rows():
    block, reason = app_counters_block([A, B], llama_cpp=True)
    assert reason is None and block["source"] == APP_COUNTERS_SOURCE and block["n_rows"] == 2
    assert block["eval_tok_s"] == pytest.approx(25.0)  # (20 + 30) / 2 — not 59 tokens / 2.45 s = 24.08
    assert block["prompt_eval_tok_s"] == pytest.approx(160.0)  # (120 + 200) / 2
    assert block["load_ms"] == pytest.approx(400.0)
    assert block["host_decode_tok_s"] == pytest.approx(23.75)
    assert block["host_vs_app_decode"] == pytest.approx(23.75 / 25.0)
    assert block["prompt_tokens_agree"] == 0.5  # b: llama.cpp evaluated 20 prompt tokens, the host counted 19


def test_a_row_without_a_number_is_left_out_of_that_mean_only():
    c = row("c", "z", decode_tok_s=99.0, app_counters=perf(eval_ms=None, load_ms=1000.0))
    block, reason = app_counters_block([A, B, c], llama_cpp=True)
    assert block["n_rows"] == 3 and block["n_decode_pairs"] == 2
    assert block["eval_tok_s"] == pytest.approx(25.0) and block["host_decode_tok_s"] == pytest.approx(23.75)
    assert block["load_ms"] == pytest.approx(600.0)
    assert reason is None


def test_simple_app_has_no_block_only_the_reason():
    block, reason = app_counters_block([row("a", "x", app_tok_s=20.0)], llama_cpp=False)
    assert block is None and "simple_app" in reason


def test_llama_cpp_processes_that_printed_nothing_give_nulls_with_the_reason():
    block, reason = app_counters_block([row("a", "x"), row("b", "y")], llama_cpp=True)
    assert block["n_rows"] == 0 and block["eval_tok_s"] is None and block["host_vs_app_decode"] is None
    assert "llama_perf_context_print" in reason and "2 answered rows" in reason
    partial, why = app_counters_block([row("a", "x", app_counters=perf(eval_ms=0.0))], llama_cpp=True)
    assert partial["eval_tok_s"] is None and partial["prompt_eval_tok_s"] == pytest.approx(120.0)  # 0 ms: no rate
    assert why.startswith("eval_tok_s, host_decode_tok_s, host_vs_app_decode:")


def test_the_runtime_is_read_from_run_json():
    assert is_llama_cpp({"app": {"name": "llama-cpp"}})
    assert is_llama_cpp({"app": {"name": "my-llama", "protocol": "llama-cpp"}})
    assert not is_llama_cpp({"app": {"name": "reference"}}) and not is_llama_cpp({})


def test_bench_block_flattens_to_the_dotted_mlflow_names():
    block = bench_block(bench_json())
    assert block["pp_tok_s"] == pytest.approx(310.0) and block["pp_tok_s_sd"] == pytest.approx(10.0)
    assert block["tg_tok_s"] == pytest.approx(46.0) and block["tg_tok_s_sd"] == pytest.approx(1.0)
    assert (block["pp_n_tokens"], block["tg_n_tokens"], block["pp_n_samples"]) == (512, 128, 3)
    assert (block["repeats"], block["delay_s"], block["threads"], block["error"]) == (3, 0.5, 2, None)
    assert (block["build_commit"], block["build_number"]) == ("a1b2c3d", 4567)
    flat = flat_metrics({"bench": block})
    assert {"bench.pp_tok_s", "bench.pp_tok_s_sd", "bench.tg_tok_s", "bench.tg_tok_s_sd", "bench.repeats",
            "bench.delay_s", "bench.threads"} <= set(flat)
    assert bench_block(None) is None


def test_bench_threads_default_is_what_llama_bench_reports():
    assert bench_block(bench_json(threads=None))["threads"] == 4  # the raw records' n_threads


def test_a_failed_bench_keeps_its_reason_and_no_numbers():
    block = bench_block(bench_json(error="llama-bench exited 1: failed to load model\nstack..."))
    assert block["error"] == "llama-bench exited 1: failed to load model"
    assert block["pp_tok_s"] is None and block["tg_tok_s"] is None and block["repeats"] == 3
    half = bench_block(bench_json(tg=None))
    assert half["pp_tok_s"] == pytest.approx(310.0) and half["tg_tok_s"] is None
    assert half["error"] == "bench.json has no tg result"


def test_bench_headline_only_for_runs_with_the_block():
    base = {"device_kind": "virtual", "throughput": {"decode_tok_s": {"mean": 20.0}}, "quality": {"score": 0.5}}
    assert "bench_tg_tok_s" not in headline(base)
    head = headline(base | {"bench": bench_block(bench_json())})
    assert head["bench_pp_tok_s"] == 310.0 and head["bench_tg_tok_s"] == 46.0
    failed = headline(base | {"bench": bench_block(bench_json(error="no model"))})
    assert "bench_tg_tok_s" in failed and failed["bench_tg_tok_s"] is None  # asked for, not measured: null


def _score(**blocks) -> dict:
    stat = {"mean": 23.0, "p50": 23.0, "cv": 0.1, "n": 2, "n_missing": 0}
    return {"device_kind": "virtual", "n_prompts": 2, "n_rows": 2,
            "throughput": {"decode_tok_s": stat, "app_tok_s": {"mean": None}, "ttft_s": {"p50": 0.25},
                           "load_s": {"p50": 0.3}},
            "quality": {"score": 0.5, "score_ci95": None}, "rates": {"eos": 1.0, "truncated": 0.0},
            "failures": {"failed": 0, "measured": 2, "crashed": 0, "timed_out": 0, "error": 0},
            "undecodable": {"rows": 0}, "plausible": None, **blocks}


def test_terminal_lines_name_each_view_of_speed():
    counters, _ = app_counters_block([A, B], llama_cpp=True)
    text = "\n".join(summary_lines(_score(app_counters=counters, bench=bench_block(bench_json()))))
    line = next(x for x in text.splitlines() if "llama.cpp's own counters" in x)
    assert "eval 25.00 tok/s" in line and "host-timed decode 23.75 tok/s = 0.950x" in line
    assert "(within 10%)" in line and "prompt tokens agree on 50% of answers" in line
    bench = next(x for x in text.splitlines() if "llama-bench" in x)
    assert "synthetic" in bench and "pp512 310.00 ± 10.00 tok/s" in bench and "tg128 46.00 ± 1.00 tok/s" in bench
    assert "3 repeats, delay 0.5 s, threads 2, build b4567 (a1b2c3d)" in bench
    assert "llama.cpp prints none per answer" in text


def test_terminal_lines_say_when_the_views_disagree_or_are_missing():
    slow = row("a", "x", decode_tok_s=10.0, app_counters=perf())  # host 10 vs llama.cpp's 20 tok/s
    counters, _ = app_counters_block([slow], llama_cpp=True)
    text = "\n".join(summary_lines(_score(app_counters=counters, bench=bench_block(bench_json(error="no model")))))
    assert "= 0.500x llama.cpp's eval (NOT within 10%)" in text
    assert "llama-bench (synthetic benchmark, not the prompt set): not measured — no model" in text
    plain = "\n".join(summary_lines(_score()))
    assert "llama.cpp" not in plain and "llama-bench" not in plain


def test_a_build_from_a_source_archive_is_not_stamped_and_says_so():
    from pipeline.score.llama_cpp import build_label

    assert build_label({"build_number": 0, "build_commit": "unknown"}).startswith("not stamped")
    assert build_label({"build_number": 4567, "build_commit": "a1b2c3d"}) == "b4567 (a1b2c3d)"
