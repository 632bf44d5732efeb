"""pipeline.report against a REAL MLflow sqlite store (tests/report/conftest.py) and the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.report import ReportError
from pipeline.report.build import report_from_mlflow
from pipeline.report.charts import pareto_front, toks_vs_budget
from pipeline.report.factors import bootstrap_ci
from pipeline.report.runs import RunRecord, select_runs
from pipeline.report.variants import factors
from tests.report.conftest import (
    DIVERGE_AT,
    EXPERIMENT,
    N_PROMPTS,
    QUANT_EFFECT,
    SW2X2,
    SWMISS,
    TEMPLATE_EFFECT,
    fp_answer,
)

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rep2x2(store: dict, tmp_path_factory: pytest.TempPathFactory):
    return report_from_mlflow(store["uri"], tmp_path_factory.mktemp("out2x2"), sweep=SW2X2)


def _data_rows(table_md: str) -> list[str]:
    return table_md.splitlines()[2:]


def test_sweep_table_has_one_row_per_child_labelled_virtual(rep2x2, store: dict) -> None:
    rows = _data_rows(rep2x2.table_md)
    assert len(rows) == 4
    assert all("virtual (host CPU)" in r for r in rows)
    assert store["parent"][:8] not in rep2x2.table_md  # the sweep parent is not a variant
    header = rep2x2.table_md.splitlines()[0]
    assert "model.name" in header and "app.template" in header
    assert "model.quant" not in header  # same grouping as model.name: an alias, named in a footnote
    text = rep2x2.report_md.read_text()
    assert "`model.name` also fixes `model.quant`" in text
    assert "NOT a phone's throughput" in text
    assert rep2x2.table_md in text


def test_table_values_come_from_the_runs(rep2x2, store: dict) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store["uri"])
    for rec, row in zip(rep2x2.records, _data_rows(rep2x2.table_md), strict=True):
        m = client.get_run(rec.run_id).data.metrics
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert f"{m['throughput.decode_tok_s.mean']:.2f} ± {m['throughput.decode_tok_s.std']:.2f}" in cells
        assert f"{m['quality.score']:.3f}" in cells
        assert cells[-2] == "—"  # energy J/token was never measured: shown as not measured, never a number


def test_every_variant_has_a_quality_ci_over_its_prompts(rep2x2) -> None:
    """The CI column is the bootstrap over the run's own per-prompt quality, and it contains the mean."""
    from pipeline.report.factors import prompt_quality

    header = [c.strip() for c in rep2x2.table_md.splitlines()[0].strip("|").split("|")]
    col = header.index("quality 95% CI")
    for rec, row in zip(rep2x2.records, _data_rows(rep2x2.table_md), strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        per_prompt, _ = prompt_quality(rec)
        lo, hi = bootstrap_ci(list(per_prompt.values()))
        assert cells[col] == f"[{lo:.3f}, {hi:.3f}]" and lo < hi
        assert lo <= sum(per_prompt.values()) / len(per_prompt) <= hi


def test_pngs_written_and_linked(rep2x2) -> None:
    names = {p.name for p in rep2x2.pngs}
    assert names == {"quality_vs_throughput.png"}  # the budget does not vary in this sweep: that plot is skipped
    text = rep2x2.report_md.read_text()
    for p in rep2x2.pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
        assert f"]({p.name})" in text
    assert "toks_vs_budget.png not drawn: the sequence budget" in text
    assert not (rep2x2.report_md.parent / "toks_vs_budget.png").exists()


def test_point_labels_sit_round_their_points() -> None:
    from pipeline.report.charts import label_offset

    assert len({label_offset(n) for n in range(1, 5)}) == 4  # four neighbours, four different offsets


def test_factor_analysis_recovers_the_bigger_effect(rep2x2) -> None:
    effects = rep2x2.effects
    assert [e.factor.key for e in effects] == ["app.template", "model.name"]
    tmpl, model = effects[0], effects[1]
    assert tmpl.baseline == "hf-chat" and model.baseline == "tiny-fp"
    t = tmpl.top
    assert t.level == "mobilequant" and t.n_pairs == 2 and t.n_prompts == N_PROMPTS and t.spread_over == "prompts"
    assert t.delta == pytest.approx(-TEMPLATE_EFFECT, abs=0.04)
    assert t.sd is not None and 0 < t.sd < 2 * 0.05
    assert t.ci95[0] < -TEMPLATE_EFFECT < t.ci95[1] and t.ci95[1] < 0
    m = model.top
    assert m.level == "tiny-w4" and m.n_pairs == 2
    assert m.delta == pytest.approx(QUANT_EFFECT, abs=0.04)
    assert abs(m.delta) < abs(t.delta)
    text = rep2x2.report_md.read_text()
    assert "## Factor analysis (off-topic diagnosis)" in text
    assert "| 1 | app.template | hf-chat | mobilequant |" in text


def test_fidelity_to_the_fp_twin(rep2x2) -> None:
    assert len(rep2x2.fidelity) == 2  # the two tiny-w4 runs
    for res in rep2x2.fidelity:
        assert res.reason is None
        assert res.fp_run.params["app.template"] == res.run.params["app.template"]
        assert res.fp_run.params["model.name"] == "tiny-fp"
        by_id = {r["prompt_id"]: r for r in res.rows}
        assert len(by_id) == N_PROMPTS  # the warm-up row is not compared
        for i, k in enumerate(DIVERGE_AT):
            row = by_id[f"q{i:02d}"]
            assert row["first_diff_token"] == k
            assert row["exact"] is (k is None)
            assert (row["rouge_l"] == 1.0) is (k is None)
        s = res.summary()
        assert s["exact_rate"] == pytest.approx(DIVERGE_AT.count(None) / N_PROMPTS)
        assert s["n_diverged"] == sum(k is not None for k in DIVERGE_AT)
    template = rep2x2.fidelity[0].run.params["app.template"]
    assert rep2x2.fidelity[0].rows[0]["fp_response"] == fp_answer(0, template)
    csv_text = (rep2x2.report_md.parent / "fidelity.csv").read_text()
    assert csv_text.count("\n") == 1 + 2 * N_PROMPTS


def test_missing_artifacts_reported_not_crashing(store: dict, tmp_path: Path) -> None:
    rep = report_from_mlflow(store["uri"], tmp_path / "out", sweep=SWMISS)
    assert len(_data_rows(rep.table_md)) == 2
    text = rep.report_md.read_text()
    assert "## Missing data" in text
    assert "missing: responses.jsonl was not logged" in text
    assert "missing: quality.jsonl was not logged" in text
    (res,) = rep.fidelity
    assert res.rows == [] and "responses.jsonl" in res.reason
    (eff,) = rep.effects
    lvl = eff.top
    assert lvl.n_pairs == 1 and lvl.spread_over == "pairs" and lvl.sd is None and lvl.n_prompts == 0
    assert any("no per-prompt quality" in n for n in lvl.notes)
    assert not (tmp_path / "out" / "fidelity.csv").exists()


def test_selection_by_experiment_and_tag(store: dict) -> None:
    assert len(select_runs(store["uri"], experiment=EXPERIMENT, load_artifacts=False)) == 6
    tagged = select_runs(store["uri"], tag="diagnose-offtopic", load_artifacts=False)
    assert {r.run_id for r in tagged} == {v for k, v in store["ids"].items() if not k.startswith("miss")}
    with pytest.raises(ReportError, match="no such MLflow experiment"):
        select_runs(store["uri"], experiment="nope")
    with pytest.raises(ReportError, match="only letters"):
        select_runs(store["uri"], sweep="x' or '1'='1")


def test_bad_baseline_is_one_clear_error(store: dict, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not a level of app.template"):
        report_from_mlflow(store["uri"], tmp_path, sweep=SW2X2, baselines={"app.template": "chatml"})
    with pytest.raises(ReportError, match="not a param that varies"):
        report_from_mlflow(store["uri"], tmp_path, sweep=SW2X2, baselines={"session.mode": "fresh"})
    rep = report_from_mlflow(store["uri"], tmp_path, sweep=SW2X2, baselines={"app.template": "mobilequant"})
    assert rep.effects[0].top.delta == pytest.approx(TEMPLATE_EFFECT, abs=0.04)


def test_cli_prints_table_and_writes_report(store: dict, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "pipeline.report", "--sweep", SW2X2, "--tracking-uri", store["uri"],
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sum(1 for line in proc.stdout.splitlines() if "virtual (host CPU)" in line) == 4
    assert (out / "report.md").exists() and (out / "quality_vs_throughput.png").exists()
    bad = subprocess.run([sys.executable, "-m", "pipeline.report", "--sweep", "no-such-sweep", "--tracking-uri",
                          store["uri"], "--out", str(tmp_path / "x")], capture_output=True, text=True, env=env,
                         timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "no finished runs selected" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------- pure parts


def _rec(i: int, **params: str) -> RunRecord:
    return RunRecord(run_id=f"r{i:07d}", name=f"r{i}", params=dict(params), tags={"device.kind": "virtual"},
                     metrics={"throughput.decode_tok_s.mean": 100.0 + i, "quality.score": 0.5}, start_time=i)


def test_pareto_front_maximises_both() -> None:
    pts = [(1.0, 0.9), (2.0, 0.5), (1.5, 0.4), (3.0, 0.1), (2.0, 0.5), (0.5, 0.95)]
    front = pareto_front(pts)
    assert [pts[i] for i in front] == [(0.5, 0.95), (1.0, 0.9), (2.0, 0.5), (2.0, 0.5), (3.0, 0.1)]
    assert 2 not in front  # (1.5, 0.4) is dominated by (2.0, 0.5)


def test_factors_merge_aliases_and_sort_levels_naturally(tmp_path: Path) -> None:
    recs = [_rec(i, **{"model.name": m, "model.quant": q, "sequence.name": s, "sequence.max_new_tokens": n,
                       "tracking.experiment": f"e{i}"})
            for i, (m, q, s, n) in enumerate([("a", "fp", "s512", "512"), ("b", "w4", "s64", "64"),
                                             ("a", "fp", "s64", "64"), ("b", "w4", "s512", "512")])]
    facs = factors(recs)
    assert [(f.key, f.aliases) for f in facs] == [("model.name", ["model.quant"]),
                                                 ("sequence.name", ["sequence.max_new_tokens"])]
    assert facs[1].levels == ["s512", "s64"]  # names sort as text; the plot's x axis uses the numeric alias
    png = toks_vs_budget(recs, facs, tmp_path / "b.png")
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_bootstrap_ci_is_seeded_and_brackets_the_mean() -> None:
    xs = [0.1, 0.3, -0.2, 0.4, 0.0, 0.25, 0.15]
    lo, hi = bootstrap_ci(xs)
    assert (lo, hi) == bootstrap_ci(xs)
    assert lo < sum(xs) / len(xs) < hi
    assert bootstrap_ci([1.0]) is None


def test_absent_sqlite_store_is_an_error_not_a_new_database(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'nope.db'}"
    with pytest.raises(ReportError, match="does not exist"):
        select_runs(uri, sweep=SW2X2)
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.slow
def test_embedding_similarity_to_fp(store: dict, tmp_path: Path) -> None:
    """The bundled all-MiniLM-L6-v2 (numpy encoder): identical answers → cosine 1, diverged < 1."""
    rep = report_from_mlflow(store["uri"], tmp_path, sweep=SW2X2, embeddings=True)
    for res in rep.fidelity:
        for row in res.rows:
            if row["exact"]:
                assert row["embedding_cos"] == pytest.approx(1.0, abs=1e-4)
            else:
                assert -1.0 <= row["embedding_cos"] < 0.9999
    assert "off (--embeddings)" not in rep.report_md.read_text()


def test_superseded_runs_are_not_reported(tmp_path: Path) -> None:
    """A run replaced by newer results of its directory (tracking.mark_superseded) is history, not a result."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    kw = dict(tracking_uri=uri, experiment="sup", params={"tag": "t"}, tags={}, artifacts=[])
    old = tracking.log_run(run_key="old", metrics={"quality.score": 0.9}, **kw)
    new = tracking.log_run(run_key="new", metrics={"quality.score": 0.1}, **kw)
    assert tracking.mark_superseded(tracking_uri=uri, experiment="sup", run_key="old", by=new,
                                    why="changed: code (pipeline/guest/npllama.py)") == [old]
    assert [r.run_id for r in select_runs(uri, experiment="sup", load_artifacts=False)] == [new]
