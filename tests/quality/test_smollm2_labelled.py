"""The scorer on REAL SmolLM2-135M-Instruct answers, hand-labelled by a written rule (tests/quality/data/README.md).

The answers were generated once by tests/quality/data/make_smollm2_answers.py (not run here: no model at test
time); this test re-scores them with the real embedding model and checks the scorer separates good answers from
failures (ROC AUC >= 0.95) and that the seed's ``<!--\\n\\nA: 1.`` joke fails.
"""

import json
import re
from pathlib import Path

import pytest

from pipeline.quality import __main__ as cli
from pipeline.quality.composite import PASS_THRESHOLD, score_items
from pipeline.quality.evaluation import auc_table, roc_auc

DATA = Path(__file__).with_name("smollm2_labelled.jsonl")
RULES_DOC = Path(__file__).parent / "data" / "README.md"


def _rows():
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def scored():
    rows = _rows()
    return rows, score_items(rows)


def test_set_is_big_and_mixed_and_every_label_names_a_written_rule():
    rows = _rows()
    written = set(re.findall(r"^- `([01]: [^`]+)`", RULES_DOC.read_text(encoding="utf-8"), re.MULTILINE))
    assert len(written) >= 6
    assert len(rows) >= 40
    assert sum(r["label"] == 1 for r in rows) >= 15 and sum(r["label"] == 0 for r in rows) >= 15
    for r in rows:
        assert r["label"] in (0, 1)
        assert r["label_rule"] in written, r["label_rule"]
        assert r["label_rule"].startswith(f"{r['label']}:")
        assert r["template"] in ("chatml", "simple", "chatml-q3")
        assert re.fullmatch(r"[0-9a-f]{64}", r["provenance"]["model_sha256"])
        assert r["provenance"]["decoding"] == "greedy"
    assert {r["template"] for r in rows} >= {"chatml", "simple"}


def test_quality_score_separates_good_from_failing_answers(scored):
    rows, out = scored
    auc = roc_auc([s["quality_score"] for s in out], [r["label"] for r in rows])
    assert auc >= 0.95, f"quality_score AUC {auc:.3f} on {DATA.name}"


def test_seed_skeleton_joke_fails_and_is_off_topic(scored):
    rows, out = scored
    hits = [s for r, s in zip(rows, out, strict=True)
            if r["id"] == "joke" and r["template"] == "simple" and r["response"].startswith("<!--\n\nA: 1.")]
    assert hits, "the <!-- A: 1. joke answer is missing from the labelled set"
    for s in hits:
        assert s["quality_score"] < PASS_THRESHOLD
        assert s["on_topic"] is False
        assert s["degeneration"] >= 0.5


def test_auc_table_and_cli(scored, capsys):
    rows, out = scored
    table = {t["family"]: t for t in auc_table(out, [r["label"] for r in rows], PASS_THRESHOLD)}
    assert table["quality_score"]["n"] == len(rows) and 0.0 <= table["quality_score"]["accuracy"] <= 1.0
    assert cli.main(["auc", str(DATA)]) == 0
    printed = capsys.readouterr().out
    assert f"| quality_score | {len(rows)} |" in printed
    assert f"{table['quality_score']['auc']:.3f}" in printed


def test_auc_cli_rejects_a_missing_label(tmp_path, capsys):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"prompt": "p", "response": "r"}\n', encoding="utf-8")
    assert cli.main(["auc", str(bad), "--no-relevance"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}:1: 'label' must be 0 (failure) or 1 (good), got None"


def test_roc_auc_definition():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # a tie counts one half
    assert roc_auc([1.0, 0.0], [1, 0]) == 1.0 and roc_auc([1.0, 0.0], [0, 1]) == 0.0
    assert roc_auc([0.3, 0.2], [1, 1]) is None
