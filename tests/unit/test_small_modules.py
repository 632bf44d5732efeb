"""Direct tests of the small modules the stage tests only cover indirectly: summary, plots, workspace, sweep
outcomes, token counting, JSON I/O, failure outcomes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline.jsonio import iter_jsonl, read_jsonl, write_json, write_jsonl
from pipeline.run.outcomes import FailureTally, failure_kind
from pipeline.score import summary
from pipeline.tracking.views import flat_metrics

ROW = {"prompt_id": "a", "prompt": "q", "response": "x", "eos": True, "truncated": False, "warmup": False,
       "decode_tok_s": 10.0, "ttft_s": 0.1, "app_tok_s": 9.0, "e2e_s": 1.0, "t_send": 1.0, "t_last_byte": 2.0,
       "n_prompt_tokens": 5, "n_output_tokens": 10, "host_blended_tok_s": 9.0}


def test_failure_kinds_and_the_verdict():
    assert failure_kind(ROW) is None
    assert failure_kind({**ROW, "crashed": True}) == "crashed"
    assert failure_kind({**ROW, "timed_out": True}) == "timed_out"
    assert failure_kind({"error": "refused", "eos": False, "app_tok_s": None}) == "error"
    assert failure_kind({**ROW, "error": "app exited after the answer"}) is None  # a finished answer
    tally = FailureTally.from_rows([ROW, {**ROW, "crashed": True}, {**ROW, "warmup": True, "crashed": True}])
    assert tally.counts() == {"measured": 2, "failed": 1, "crashed": 1, "timed_out": 0, "error": 0}
    assert tally.verdict() == ("complete", None)
    assert FailureTally.from_rows([{**ROW, "crashed": True}]).verdict()[0] == "failed"


def test_summary_counts_failures_as_zero_and_leaves_their_timings_out():
    rows = [ROW, {**ROW, "prompt_id": "b", "crashed": True, "decode_tok_s": 99999.0}]
    scores = [{"id": "a", "quality_score": 0.8, "on_topic": True}, summary.failed_answer_score(rows[1], "crashed")]
    prompt_rows = summary.per_prompt(rows, scores, {}, [])
    out = summary.summarize_run(rows, prompt_rows, [], [], device_kind="virtual", bandwidth_gb_s=None,
                                bandwidth_reason="virtual", weight_bytes=None)
    assert out["quality"]["score"] == pytest.approx(0.4) and out["quality"]["on_topic_rate"] == 0.5
    assert out["throughput"]["decode_tok_s"]["mean"] == 10.0 and out["failures"]["crashed"] == 1
    assert flat_metrics(out)["failures.crashed"] == 1.0


def test_device_bandwidth_is_null_with_a_reason_unless_known():
    assert summary.device_bandwidth({"kind": "virtual"}, None, {"8gen3": 77})[0] is None
    assert summary.device_bandwidth({"kind": "adb", "props": {"ro.soc.model": "SM8650"}}, None,
                                    {"8gen3": 77.0}) == (77.0, None)
    bw, why = summary.device_bandwidth({"kind": "adb", "props": {"ro.soc.model": "SM9999"}}, None, {})
    assert bw is None and "SM9999" in why


def test_plots_are_labelled_with_the_device_kind(tmp_path):
    from pipeline.score import plots

    rows = [{"prompt_id": "a", "decode_tok_s": 5.0, "n_prompt_tokens": 7, "quality_score": 0.5,
             "degeneration": 0.25}]
    paths = plots.run_plots(rows, ["degeneration"], tmp_path, "virtual")
    assert [p.name for p in paths] == ["decode_tok_s_per_prompt.png", "quality_per_family.png",
                                       "decode_tok_s_vs_prompt_tokens.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert "not a phone" in plots.device_label("virtual") and plots.device_label("real") == "real device"


def test_workspace_roots_and_git(tmp_path, monkeypatch):
    from pipeline.workspace import git_commit, git_dirty, outside_dvc_temp, resolve, shared_root

    assert outside_dvc_temp(tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "abc" / "x") == tmp_path / "repo"
    assert resolve("a/b", tmp_path) == tmp_path / "a/b" and resolve("/abs", tmp_path) == Path("/abs")
    monkeypatch.setenv("ODEVAL_ROOT", str(tmp_path))
    assert shared_root() == tmp_path.resolve()
    assert git_commit(tmp_path) is None and git_dirty(tmp_path) is None  # not a repo
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("1")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-qm", "x"], check=True, env={**env, "PATH": "/usr/bin"})
    assert len(git_commit(tmp_path) or "") == 40 and git_dirty(tmp_path) is False
    (tmp_path / "f").write_text("2")
    assert git_dirty(tmp_path) is True


def test_sweep_outcomes_name_failed_and_unfinished_jobs(tmp_path):
    from pipeline.sweep.job import job_outcomes, record_job

    for i, overrides in enumerate(["- model=a\n- x=1\n", "- model=b\n- x=1\n", "- model=c\n- x=1\n"]):
        (tmp_path / f"job{i}" / ".hydra").mkdir(parents=True)
        (tmp_path / f"job{i}" / ".hydra" / "overrides.yaml").write_text(overrides)
    record_job(tmp_path / "job0", "complete")
    record_job(tmp_path / "job1", "failed", "invalid config:\n  - bad")
    out = {j["job"]: j for j in job_outcomes(tmp_path)}
    assert out["job0"]["status"] == "complete" and out["job1"]["error"] == "invalid config: - bad"
    assert out["job2"]["status"] == "did not finish" and out["job2"]["overrides"] == "model=c"


def test_token_counter_reads_the_model_tokenizer(tiny_model, tmp_path):
    from pipeline.models.count import TokenizerNotFound, token_counter

    count = token_counter(tiny_model("tiny-fp"))
    assert count("") == 0 and count("tell me a joke.") > 0
    with pytest.raises(TokenizerNotFound, match="no tokenizer.json or tokenizer.bin"):
        token_counter(tmp_path)


def test_json_io_is_atomic_canonical_and_names_bad_lines(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [1]})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}\n'
    write_jsonl(tmp_path / "r.jsonl", [{"x": "é"}, {"y": 2}])
    assert read_jsonl(tmp_path / "r.jsonl") == [{"x": "é"}, {"y": 2}] and read_jsonl(tmp_path / "none") == []
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind
    (tmp_path / "bad.jsonl").write_text('{"ok": 1}\n\n{bad\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: invalid JSON"):
        list(iter_jsonl(tmp_path / "bad.jsonl"))
    json.loads((tmp_path / "a.json").read_text())


def test_sweep_preload_with_the_bundled_model_imports_no_torch(tmp_path):
    """The forked workers' preload: the bundled embedding model is the numpy encoder, so no torch and no
    sentence-transformers are imported (they were ~4 s of every sweep's start)."""
    code = ("import sys\nfrom pipeline.sweep.warmup import preload_host_side\n"
            "took = preload_host_side({'scoring': {'relevance': True, 'embedding_model': None},\n"
            "                          'tracking': {'backend': 'mlflow'}})\n"
            "print(sorted(took))\n"
            "print(sorted(preload_host_side({'tracking': {'backend': 'none'}})))\n"
            "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))\n")
    took, untracked, heavy = _python_lines(code, tmp_path, 3)
    assert "'embedding model'" in took and "'mlflow'" in took and "torch" not in took
    assert "'mlflow'" not in untracked  # tracking=none: the sweep never imports MLflow
    assert heavy == "[]"


def test_pool_worker_preload_starts_once_when_the_first_job_runs(tmp_path):
    """hydra/launcher=pool: a forked worker only schedules its warm-up; the first job's `run` phase starts it in a
    daemon thread (once), and ``done`` tells later jobs the worker is warm."""
    code = ("import threading\nfrom pipeline.sweep.warmup import this_worker\n"
            "made = []\n"
            "class Counted(threading.Thread):\n"
            "    def start(self):\n"
            "        made.append(self.name)\n"
            "        super().start()\n"
            "threading.Thread = Counted\n"
            "this_worker.start()\n"  # nothing scheduled: nothing starts
            "this_worker.schedule({})\n"
            "print(this_worker.done.is_set(), len(made))\n"
            "this_worker.start(); this_worker.start()\n"
            "print(made.count('odeval-preload'), this_worker.done.wait(120))\n")
    scheduled, started = _python_lines(code, tmp_path, 2)
    assert scheduled == "False 0"  # nothing loaded, no thread yet
    assert started == "1 True"  # exactly one preload thread, and it finished


def _python_lines(code: str, cwd: Path, n: int) -> list[str]:
    """The last ``n`` stdout lines of ``python -c code`` in a fresh interpreter (this checkout on PYTHONPATH): what
    a module imports or starts is only visible in a process that has not imported it yet."""
    import os
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=150)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-n:]
