"""rule_pass_rate: IFEval-style verifiable instructions, implemented here.

WHY not lm-eval's ifeval: it is not installed, pulls langdetect/immutabledict/nltk and needs nltk's punkt data
(a download) — too heavy for a handful of deterministic string checks. Each rule is a pure function of the answer
text plus arguments, registered with an argument schema so prompt files are validated at load time (unknown rule,
missing/unknown/mistyped argument -> error with the file:line).

A rule in a prompt file: ``{"name": "max_words", "n": 20}``. ``RULES`` lists the registry; ``describe_rules()``
gives the one-line help used in error messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.quality.language import SUPPORTED, detect
from pipeline.quality.text import contains_tokens, normalize, tokens


class RuleError(ValueError):
    """A rule spec is invalid (unknown name, bad arguments). The message names the rule and the fix."""


@dataclass(frozen=True)
class Rule:
    name: str
    check: Callable[..., bool]
    args: Mapping[str, type | tuple[type, ...]]  # every argument is required
    doc: str


RULES: dict[str, Rule] = {}


def _rule(name: str, doc: str, **args: type | tuple[type, ...]) -> Callable[[Callable[..., bool]], Callable[..., bool]]:
    def deco(fn: Callable[..., bool]) -> Callable[..., bool]:
        RULES[name] = Rule(name, fn, args, doc)
        return fn

    return deco


def _words(text: str) -> list[str]:
    return tokens(text)


def _sentences(text: str) -> list[str]:
    # A sentence ends at . ! ? (or the CJK forms) followed by space/end; bullets/lines also end sentences.
    parts = re.split(r"(?<=[.!?\u3002\uff01\uff1f])\s+|(?<=[\u3002\uff01\uff1f])|\n+", text.strip())
    return [p for p in parts if re.search(r"\w", p)]


_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022+]|\d+[.)])\s+\S", re.MULTILINE)


@_rule("max_words", "at most n words", n=int)
def _max_words(text: str, n: int) -> bool:
    return len(_words(text)) <= n


@_rule("min_words", "at least n words", n=int)
def _min_words(text: str, n: int) -> bool:
    return len(_words(text)) >= n


@_rule("max_sentences", "at most n sentences", n=int)
def _max_sentences(text: str, n: int) -> bool:
    return len(_sentences(text)) <= n


@_rule("min_sentences", "at least n sentences", n=int)
def _min_sentences(text: str, n: int) -> bool:
    return len(_sentences(text)) >= n


@_rule("max_chars", "at most n characters (stripped)", n=int)
def _max_chars(text: str, n: int) -> bool:
    return len(text.strip()) <= n


@_rule("bullet_count", "exactly n bullet lines ('- ', '* ', '• ', '1. ')", n=int)
def _bullet_count(text: str, n: int) -> bool:
    return len(_BULLET_RE.findall(text)) == n


@_rule("lowercase", "no upper-case letters at all")
def _lowercase(text: str) -> bool:
    return any(c.isalpha() for c in text) and text == text.lower()


@_rule("uppercase", "no lower-case letters at all")
def _uppercase(text: str) -> bool:
    return any(c.isalpha() for c in text) and text == text.upper()


@_rule("must_include", "every one of words appears as whole words (case-insensitive)", words=list)
def _must_include(text: str, words: Sequence[str]) -> bool:
    toks = tokens(text)
    return all(contains_tokens(toks, tokens(w)) for w in words)


@_rule("must_not_include", "none of words appears as whole words (case-insensitive)", words=list)
def _must_not_include(text: str, words: Sequence[str]) -> bool:
    toks = tokens(text)
    return not any(contains_tokens(toks, tokens(w)) for w in words)


@_rule("keyword_frequency", "word appears at least n times", word=str, n=int)
def _keyword_frequency(text: str, word: str, n: int) -> bool:
    toks, w = tokens(text), tokens(word)
    hits = sum(toks[i : i + len(w)] == w for i in range(len(toks) - len(w) + 1)) if w else 0
    return hits >= n


@_rule("starts_with", "the answer begins with text (case-insensitive, leading spaces ignored)", text=str)
def _starts_with(answer: str, text: str) -> bool:
    return normalize(answer.lstrip()).startswith(normalize(text))


@_rule("ends_with", "the answer ends with text (case-insensitive, trailing spaces ignored)", text=str)
def _ends_with(answer: str, text: str) -> bool:
    return normalize(answer.rstrip()).endswith(normalize(text))


@_rule("no_commas", "no ',' (or '，') anywhere")
def _no_commas(text: str) -> bool:
    return "," not in text and "\uff0c" not in text


@_rule("paragraph_count", "exactly n paragraphs separated by blank lines", n=int)
def _paragraph_count(text: str, n: int) -> bool:
    return len([p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]) == n


@_rule("json_format", "the whole answer parses as JSON (a ```json fence is allowed)")
def _json_format(text: str) -> bool:
    body = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", text.strip(), flags=re.IGNORECASE)
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


@_rule("wrapped_in_quotes", 'the whole answer is wrapped in double quotes')
def _wrapped_in_quotes(text: str) -> bool:
    t = text.strip()
    return len(t) >= 2 and t[0] in "\"\u201c" and t[-1] in "\"\u201d"


@_rule("ends_with_question", "the answer's last sentence is a question")
def _ends_with_question(text: str) -> bool:
    return text.rstrip().endswith(("?", "\uff1f"))


@_rule("matches", "the regular expression pattern matches somewhere (re.search, case-insensitive)", pattern=str)
def _matches(text: str, pattern: str) -> bool:
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


@_rule("language", "the answer is written in lang (script detector: en, zh, ja, ko, ru)", lang=str)
def _language(text: str, lang: str) -> bool:
    return detect(text) == lang


_JOKE_MARKERS = re.compile(
    r"knock,? knock|walks? into a bar|what do you call|why (?:did|do|does|don't|didn't|was|is|are|can't)\b"
    r"|what's the difference|how many .+ does it take|\bpun\b|\bpunchline\b",
    re.IGNORECASE,
)


@_rule("joke_shape", "looks like a joke: a setup question followed by a punchline, or a classic joke opener")
def _joke_shape(text: str) -> bool:
    """Heuristic, not a humour detector: a '?' that is followed by more text (setup -> punchline) or a known opener.

    WHY: the seed's failure was an encyclopaedic paragraph in reply to "tell me a joke."; such text has neither.
    """
    t = text.strip()
    setup_punchline = re.search(r"[?\uff1f][^\w]*\w", t) is not None
    return bool(setup_punchline or _JOKE_MARKERS.search(t))


def describe_rules() -> str:
    """"name(arg, ...)" for every registered rule, for error messages and --help."""
    return ", ".join(f"{r.name}({', '.join(r.args)})" if r.args else r.name for r in RULES.values())


def validate_rule(spec: Any) -> None:
    """Raise RuleError unless ``spec`` is {"name": <registered>, <its args with the right types>}."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise RuleError(f'rule {spec!r} must be an object with a "name" — e.g. {{"name": "max_words", "n": 20}}')
    name = spec["name"]
    rule = RULES.get(name)
    if rule is None:
        raise RuleError(f"unknown rule {name!r} — known rules: {describe_rules()}")
    given = {k: v for k, v in spec.items() if k != "name"}
    unknown = sorted(set(given) - set(rule.args))
    missing = sorted(set(rule.args) - set(given))
    if unknown or missing:
        problems = ([f"unknown argument(s) {unknown}"] if unknown else []) + (
            [f"missing argument(s) {missing}"] if missing else []
        )
        raise RuleError(f"rule {name!r}: {'; '.join(problems)} — {name} takes ({', '.join(rule.args) or 'nothing'})")
    for arg, typ in rule.args.items():
        value = given[arg]
        if typ is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise RuleError(f"rule {name!r}: {arg}={value!r} must be a non-negative integer")
        if typ is str and (not isinstance(value, str) or not value):
            raise RuleError(f"rule {name!r}: {arg}={value!r} must be a non-empty string")
        bad_list = not isinstance(value, list) or not value or not all(isinstance(w, str) and w for w in value)
        if typ is list and bad_list:
            raise RuleError(f"rule {name!r}: {arg}={value!r} must be a non-empty list of non-empty strings")
    if name == "matches":
        try:
            re.compile(given["pattern"])
        except re.error as exc:
            raise RuleError(f"rule 'matches': pattern {given['pattern']!r} is not a valid regex ({exc})") from exc
    if name == "language" and given["lang"] not in SUPPORTED:
        raise RuleError(f"rule 'language': lang={given['lang']!r} — supported: {', '.join(SUPPORTED)}")


def check_rule(response: str, spec: Mapping[str, Any]) -> bool:
    """Run one validated rule on ``response``."""
    validate_rule(dict(spec))
    args = {k: v for k, v in spec.items() if k != "name"}
    return bool(RULES[spec["name"]].check(response, **args))


def rule_scores(response: str, rules: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """``rule_pass_rate`` (None without rules), counts and the names of failed rules (comma-separated, CSV-friendly)."""
    specs = list(rules or ())
    if not specs:
        return {"rule_pass_rate": None, "rules_passed": None, "rules_total": 0, "rules_failed": ""}
    failed = [s["name"] for s in specs if not check_rule(response, s)]
    passed = len(specs) - len(failed)
    return {
        "rule_pass_rate": passed / len(specs),
        "rules_passed": passed,
        "rules_total": len(specs),
        "rules_failed": ",".join(failed),
    }
