"""Prompt-set loader: the bundled sets load; every malformed line is reported as FILE:LINE with the fix."""

import json
from pathlib import Path

import pytest

from pipeline.quality.rules import RULES
from pipeline.run.prompts import Prompt, PromptSetError, length_prompts, load_prompts

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ROOT / "prompts"


def _write(tmp_path, *lines, name="set.jsonl"):
    f = tmp_path / name
    f.write_text("\n".join(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines)
                 + "\n", encoding="utf-8")
    return f


def test_instruct_set():
    ps = load_prompts(PROMPTS / "instruct.jsonl")
    assert len(ps) >= 20 and all(p.rules for p in ps) and {p.set_name for p in ps} == {"instruct"}
    used = {r["name"] for p in ps for r in p.rules}
    assert len(used) >= 12, f"instruct set exercises only {sorted(used)}"


def test_zh_set():
    ps = load_prompts(PROMPTS / "zh.jsonl")
    assert all(p.lang == "zh" for p in ps)
    assert sum(bool(p.reference) for p in ps) >= 10


@pytest.mark.parametrize("name", ["smoke", "qa"])
def test_other_engineers_sets_validate_when_present(name):
    path = PROMPTS / f"{name}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not written yet")
    ps = load_prompts(path)
    if name == "smoke":
        assert any(p.prompt == "tell me a joke." for p in ps)
    else:
        assert len(ps) >= 40 and all(p.reference for p in ps)


def test_full_line_parses_into_prompt(tmp_path):
    f = _write(tmp_path, {"id": "a", "prompt": "Capital of France?", "reference": ["Paris"], "keywords": ["paris"],
                          "rules": [{"name": "max_words", "n": 10}], "lang": "en", "tags": ["train"]},
               "", {"id": "b", "prompt": "hi", "reference": "Hello"})
    a, b = load_prompts(f, set_name="mine")
    assert a == Prompt("a", "Capital of France?", ("Paris",), ("paris",), ({"name": "max_words", "n": 10},), "en",
                       ("train",), "mine")
    assert b.reference == ("Hello",) and b.set_name == "mine"
    assert a.to_item()["rules"] == [{"name": "max_words", "n": 10}]
    assert load_prompts(f)[0].set_name == "set"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "a", "prompt": "x"', ], ":1: invalid JSON"),
        ([{"id": "a", "prompt": "x"}, "[1, 2]"], ":2: expected a JSON object"),
        ([{"prompt": "x"}], ":1: missing or empty 'id'"),
        ([{"id": "a"}], ":1: missing or empty 'prompt'"),
        ([{"id": "a", "prompt": "  "}], ":1: missing or empty 'prompt'"),
        ([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "a", "prompt": "z"}],
         ":3: duplicate id 'a' (first on line 1)"),
        ([{"id": "a", "prompt": "x", "refrence": "y"}], ":1: unknown key(s) ['refrence'] — allowed keys: id, prompt"),
        ([{"id": "a", "prompt": "x", "rules": [{"name": "all_lowercase"}]}],
         ":1: unknown rule 'all_lowercase' — known rules: max_words(n)"),
        ([{"id": "a", "prompt": "x", "rules": [{"name": "max_words", "n": -1}]}], ":1: rule 'max_words': n=-1"),
        ([{"id": "a", "prompt": "x", "rules": {"name": "lowercase"}}], ":1: 'rules' must be a list"),
        ([{"id": "a", "prompt": "x", "reference": 4}], ":1: 'reference' must be a string or a list"),
        ([{"id": "a", "prompt": "x", "keywords": "k"}], ":1: 'keywords' must be a list of non-empty strings"),
        ([{"id": "a", "prompt": "x", "lang": "English"}], ":1: 'lang' must be a language code"),
        ([{"id": "a", "prompt": "line one\nline two"}], ":1: 'prompt' contains a newline"),
    ],
)
def test_errors_name_file_and_line(tmp_path, lines, message):
    f = _write(tmp_path, *lines)
    with pytest.raises(PromptSetError) as ei:
        load_prompts(f)
    assert str(ei.value).startswith(f"{f}:")
    assert message in str(ei.value)


def test_newlines_join_mode(tmp_path):
    f = _write(tmp_path, {"id": "a", "prompt": "line one\r\n  line two\nthree"})
    assert load_prompts(f, newlines="join")[0].prompt == "line one line two three"


def test_missing_empty_and_non_utf8_files(tmp_path):
    with pytest.raises(PromptSetError, match="no such prompt file"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(PromptSetError, match="no prompts"):
        load_prompts(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"id": "a", "prompt": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(PromptSetError, match="not UTF-8"):
        load_prompts(tmp_path / "latin1.jsonl")


def test_rule_registry_is_what_the_loader_checks_against():
    assert {"max_words", "lowercase", "bullet_count", "must_include", "must_not_include", "joke_shape"} <= set(RULES)


@pytest.fixture(scope="module")
def minilm_count():
    """A real WordPiece tokenizer (the bundled MiniLM tokenizer.json), counting tokens without special tokens."""
    from tokenizers import Tokenizer

    from pipeline.quality.relevance import bundled_model_dir

    tok = Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


@pytest.mark.parametrize("target", [64, 256, 1000])
def test_length_prompts_hit_the_target_with_a_real_tokenizer(minilm_count, target):
    ps = length_prompts(target, minilm_count, n=3, seed=1)
    assert len(ps) == 3 and len({p.prompt for p in ps}) == 3
    for p in ps:
        n = minilm_count(p.prompt)
        assert target - 20 <= n <= target, n  # as close as a whole word allows
        assert "\n" not in p.prompt and p.prompt.endswith("?")
        assert p.reference and any(r.lower() in p.prompt.lower() for r in p.reference)  # the fact is in the text
        assert f"tokens={n}" in p.tags


def test_length_prompts_are_deterministic_and_seeded():
    count = lambda s: len(s.split())  # noqa: E731
    assert length_prompts(128, count, seed=3) == length_prompts(128, count, seed=3)
    assert length_prompts(128, count, seed=3) != length_prompts(128, count, seed=4)
    with pytest.raises(PromptSetError, match="below the bare question"):
        length_prompts(5, count)
