"""A configuration run again (a sweep re-run after its job dirs were deleted) is reported once: its newest run."""

from __future__ import annotations

from pipeline.report.runs import RunRecord, newest_per_config


def rec(run_id: str, start: int, **params: str) -> RunRecord:
    return RunRecord(run_id=run_id, name=run_id, params=params, metrics={}, tags={}, start_time=start)


def test_the_newest_run_of_each_configuration_is_kept_and_the_rest_named(capsys):
    runs = [rec("old-ref", 1, app="reference"), rec("llama", 2, app="llama-cpp"), rec("new-ref", 3, app="reference"),
            rec("other", 4, app="reference", prompts="instruct")]
    kept = newest_per_config(runs)
    assert [r.run_id for r in kept] == ["llama", "new-ref", "other"]  # order kept: oldest first
    err = capsys.readouterr().err
    assert "1 older run(s)" in err and "old-ref"[:8] in err


def test_distinct_configurations_are_all_kept(capsys):
    runs = [rec("a", 1, model="x"), rec("b", 1, model="y")]
    assert newest_per_config(runs) == runs and capsys.readouterr().err == ""
