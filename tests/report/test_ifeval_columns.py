"""The report's table shows IFEval's four accuracies and the share of cut answers when a run has them, and no IFEval
columns for runs of odeval's own prompt sets."""

from __future__ import annotations

from pipeline.report.runs import RunRecord
from pipeline.report.table import IFEVAL_COLUMNS, NA, table_rows

BASE = {"throughput.decode_tok_s.mean": 20.0, "quality.score": 0.5, "n_prompts": 19}
IFEVAL = {"ifeval.prompt_strict.value": 0.0526, "ifeval.prompt_strict.ci_low": 0.0094,
          "ifeval.prompt_strict.ci_high": 0.2464, "ifeval.prompt_loose.value": 0.1053,
          "ifeval.instruction_strict.value": 0.2121, "ifeval.instruction_loose.value": 0.2424,
          "ifeval.truncated.rate": 8 / 19}


def _rec(i: int, metrics: dict) -> RunRecord:
    return RunRecord(run_id=f"r{i:07d}", name=f"r{i}", params={"model.name": f"m{i}"},
                     tags={"device.kind": "virtual"}, metrics=dict(metrics), start_time=i)


def test_ifeval_columns_only_when_a_run_has_them():
    header, _ = table_rows([_rec(1, BASE)], [])
    assert not any(h.startswith("IFEval") for h in header)
    header, rows = table_rows([_rec(1, BASE | IFEVAL), _rec(2, BASE)], [])
    at = header.index(IFEVAL_COLUMNS[0])
    assert header[at:at + 5] == IFEVAL_COLUMNS
    assert rows[0][at:at + 5] == ["0.053 [0.01, 0.25]", "0.105", "0.212", "0.242", "0.42"]
    assert rows[1][at:at + 5] == [NA] * 5
