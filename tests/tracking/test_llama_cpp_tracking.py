"""The score stage on a llama.cpp run's outputs (synthetic, to the run side's contract) into a REAL MLflow store:
score.json's ``app_counters`` and ``bench`` blocks, their headline entries, the dotted MLflow metrics, bench.json
as an artifact, and a simple_app run that shows none of them as missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import compose, to_config
from pipeline.context import RunContext
from pipeline.stages import score as score_stage
from tests.helpers.runtime_runs import bench_json, perf, row, write_score_inputs

EXPERIMENT = "odeval-llama-cpp"


def llama_rows() -> list[dict]:
    return [row("q1", "Paris", decode_tok_s=19.0, app_counters=perf(eval_tokens=29, eval_ms=1450.0)),
            row("q2", "Paris is the capital", decode_tok_s=28.5, n_prompt_tokens=19,
                app_counters=perf(eval_tokens=30, eval_ms=1000.0, prompt_eval_tokens=20)),
            row("q1", "warm", warmup=True, app_counters=perf(eval_tokens=1, eval_ms=1.0))]  # warm-up: not counted


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the module (MLflow's migrations cost seconds); each test logs under its own tag."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def scored(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run the score stage on synthetic artifacts; returns (score.json, headline.json, MLflow run, stdout, client)."""
    from mlflow import MlflowClient

    monkeypatch.setenv("ODEVAL_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def run(name: str, rows: list[dict], app_name: str, bench: dict | None = None) -> tuple:
        work = tmp_path / name
        write_score_inputs(work, rows, app_name=app_name, bench=bench)
        cfg = to_config(compose([f"tracking.tracking_uri={uri}", f"tracking.experiment={EXPERIMENT}",
                                 "scoring.relevance=false", f"tag={name}"]))
        capsys.readouterr()
        score_stage.run(cfg, work, RunContext())
        out = capsys.readouterr().out
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        (mlrun,) = client.search_runs([exp.experiment_id], filter_string=f"params.tag = '{name}'")
        return (json.loads((work / "metrics" / "score.json").read_text()),
                json.loads((work / "metrics" / "headline.json").read_text()), mlrun, out, client)

    return run


def test_a_llama_cpp_run_logs_both_views_of_its_speed(scored) -> None:
    score, head, mlrun, out, client = scored("llama", llama_rows(), "llama-cpp", bench_json())
    c = score["app_counters"]
    assert c["n_rows"] == 2 and c["eval_tok_s"] == pytest.approx(25.0)
    assert c["host_vs_app_decode"] == pytest.approx(23.75 / 25.0) and c["prompt_tokens_agree"] == 0.5
    assert "app_counters_reason" not in score
    assert score["bench"]["pp_tok_s"] == pytest.approx(310.0) and score["bench"]["error"] is None
    assert head["bench_pp_tok_s"] == 310.0 and head["bench_tg_tok_s"] == 46.0
    m = mlrun.data.metrics
    assert m["app_counters.eval_tok_s"] == pytest.approx(25.0)
    assert m["app_counters.host_vs_app_decode"] == pytest.approx(0.95)
    assert m["app_counters.prompt_eval_tok_s"] == pytest.approx(160.0)
    assert m["bench.pp_tok_s"] == pytest.approx(310.0) and m["bench.pp_tok_s_sd"] == pytest.approx(10.0)
    assert m["bench.tg_tok_s"] == pytest.approx(46.0) and m["bench.tg_tok_s_sd"] == pytest.approx(1.0)
    assert m["bench_tg_tok_s"] == 46.0 and m["bench.pp_n_tokens"] == 512
    assert mlrun.data.tags["bench.build"] == "b4567 (a1b2c3d)" and "bench.error" not in mlrun.data.tags
    assert "bench.json" in {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert "llama.cpp's own counters (llama_perf_context_print, 2 answers)" in out
    assert "llama-bench (synthetic benchmark, not the prompt set): pp512 310.00 ± 10.00 tok/s" in out


def test_a_failed_bench_is_missing_with_its_reason_never_a_number(scored) -> None:
    score, head, mlrun, out, _ = scored("failed", llama_rows(), "llama-cpp", bench_json(error="model not found"))
    assert score["bench"]["error"] == "model not found" and score["bench"]["tg_tok_s"] is None
    assert head["bench_tg_tok_s"] is None
    missing = mlrun.data.tags["missing_metrics"].split(",")
    assert {"bench.pp_tok_s", "bench.tg_tok_s", "bench_tg_tok_s"} <= set(missing)
    assert "bench.tg_tok_s" not in mlrun.data.metrics
    assert mlrun.data.tags["bench.error"] == "model not found"
    assert "not measured — model not found" in out


def test_a_simple_app_run_has_neither_block_and_misses_nothing_of_them(scored) -> None:
    rows = [row("q1", "Paris", app_tok_s=21.0), row("q2", "Paris is it", app_tok_s=20.0)]
    score, head, mlrun, out, client = scored("simple", rows, "reference")
    assert "app_counters" not in score and "simple_app" in score["app_counters_reason"]
    assert "bench" not in score and "bench_tg_tok_s" not in head
    assert not any(k.startswith(("app_counters", "bench")) for k in mlrun.data.metrics)
    missing = mlrun.data.tags.get("missing_metrics", "")
    assert "app_counters" not in missing and "bench" not in missing
    assert "bench.json" not in {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert "llama.cpp" not in out and "llama-bench" not in out


def test_llama_cpp_processes_that_printed_no_counters_are_missing_metrics(scored) -> None:
    score, _, mlrun, _, _ = scored("silent", [row("q1", "Paris"), row("q2", "Rome")], "llama-cpp")
    assert score["app_counters"]["n_rows"] == 0 and "llama_perf_context_print" in score["app_counters_reason"]
    assert "app_counters.eval_tok_s" in mlrun.data.tags["missing_metrics"].split(",")
