"""Prompt sets: load and validate ``prompts/*.jsonl``, and generate synthetic prompts of a target token length.

WHY strict validation: a typo in a prompt file ("refrence") would otherwise silently turn a scored QA item into an
unscored one, and a prompt with a newline would be sent to simple_app as two prompts (it reads one line per
prompt). Every problem is reported as ``FILE:LINE: what is wrong — what to do``.

Line format (contract): one JSON object per line with ``id`` (str, unique), ``prompt`` (str) and optional
``reference`` (str or list of aliases), ``keywords`` (list[str]), ``rules`` (list of {"name": <rule>, ...args},
see pipeline/quality/rules.py), ``lang`` (e.g. "en", "zh"), ``tags`` (list[str]). Blank lines are skipped.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.apps.simple_app import check_prompt_line
from pipeline.apps.simple_app_output import SimpleAppError
from pipeline.quality.rules import RuleError, validate_rule

KEYS = ("id", "prompt", "reference", "keywords", "rules", "lang", "tags")
_MAX_BYTES_PER_TOKEN = 64  # no vocabulary piece is longer, so more bytes than this × tokens cannot fit


class PromptSetError(ValueError):
    """A prompt file is unusable; the message is ``FILE:LINE: problem — fix``."""


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    reference: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    rules: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    lang: str | None = None
    tags: tuple[str, ...] = ()
    set_name: str = ""
    where: str = field(default="", compare=False)  # "FILE:LINE" it came from, for errors raised later
    # a benchmark's own scoring data (prompts=ifeval: key, original prompt, instruction_id_list, kwargs), scored by
    # the benchmark's checker (pipeline/quality/ifeval.py); None for odeval's own sets
    ifeval: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    def to_item(self) -> dict[str, Any]:
        """The dict shape ``pipeline.quality.score_items`` takes (add ``response``/``eos``/``truncated``).

        ``ifeval`` only when set: it is part of what a row asked (its ask key), and leaving it out for every other
        set keeps their ask keys — and so their finished rows — unchanged."""
        item = {"id": self.id, "prompt": self.prompt, "reference": list(self.reference),
                "keywords": list(self.keywords), "rules": [dict(r) for r in self.rules], "lang": self.lang}
        return item | {"ifeval": self.ifeval} if self.ifeval is not None else item


def _str_list(where: str, key: str, value: Any, *, allow_str: bool = False) -> tuple[str, ...]:
    if allow_str and isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        want = "a string or a list of non-empty strings" if allow_str else "a list of non-empty strings"
        raise PromptSetError(f"{where}: {key!r} must be {want}, got {json.dumps(value, ensure_ascii=False)}")
    return tuple(value)


def _single_line(where: str, text: str, newlines: str) -> str:
    if "\n" not in text and "\r" not in text:
        return text
    if newlines == "join":
        return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()
    raise PromptSetError(
        f"{where}: 'prompt' contains a newline — the app reads one line per prompt; put it on one line "
        "or load with newlines='join'"
    )


def parse_prompt(obj: Any, where: str, *, set_name: str = "", newlines: str = "reject") -> Prompt:
    """Validate one decoded line; ``where`` ("FILE:LINE") prefixes every error."""
    if not isinstance(obj, dict):
        raise PromptSetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise PromptSetError(f"{where}: unknown key(s) {unknown} — allowed keys: {', '.join(KEYS)}")
    for key in ("id", "prompt"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise PromptSetError(f"{where}: missing or empty {key!r} — every line needs a non-empty string {key!r}")
    rules = obj.get("rules", [])
    if not isinstance(rules, list):
        raise PromptSetError(f"{where}: 'rules' must be a list of rule objects")
    for spec in rules:
        try:
            validate_rule(spec)
        except RuleError as exc:
            raise PromptSetError(f"{where}: {exc}") from exc
    lang = obj.get("lang")
    if lang is not None and (not isinstance(lang, str) or not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]+)?", lang)):
        raise PromptSetError(f"{where}: 'lang' must be a language code like \"en\" or \"zh\", got {lang!r}")
    text = _single_line(where, obj["prompt"], newlines)
    check_line(where, "prompt", text)
    return Prompt(
        id=obj["id"],
        prompt=text,
        reference=_str_list(where, "reference", obj["reference"], allow_str=True) if "reference" in obj else (),
        keywords=_str_list(where, "keywords", obj["keywords"]) if "keywords" in obj else (),
        rules=tuple(dict(r) for r in rules),
        lang=lang,
        tags=_str_list(where, "tags", obj["tags"]) if "tags" in obj else (),
        set_name=set_name,
        where=where,
    )


def check_line(where: str, what: str, text: str) -> None:
    """Refuse, with ``where``, a line simple_app would not answer as one prompt (NUL, leading ``!``/``-``, …).

    WHY here: the runner would refuse the same line, but only after the stage cleared the previous outputs; a
    prompt file is checked when it is loaded, before anything is touched.
    """
    try:
        check_prompt_line(text)
    except SimpleAppError as exc:
        raise PromptSetError(f"{where}: {what}: {exc} — edit that line") from None


def check_lengths(prompts: list[Prompt], sent: list[str], count_tokens: Callable[[str], int], context: int,
                  count_prompt: Callable[[str], int] | None = None, positions: int | None = None) -> None:
    """Refuse every prompt that does not fit, naming FILE:LINE: its line as sent over ``context`` tokens
    (``sequence.context``), or — with ``count_prompt`` (the ids the app feeds, template included) — over
    ``positions`` (the model's positions left after ``max_new_tokens``).

    The rule (explicit, never silent): a prompt that does not fit the sequence budget is refused before any
    device work, not truncated — a truncated prompt is another question.
    """
    problems = []
    for p, line in zip(prompts, sent, strict=True):
        where = p.where or p.id
        nbytes = len(line.encode("utf-8"))
        if nbytes > _MAX_BYTES_PER_TOKEN * context:  # certainly too long: do not spend minutes tokenising it
            problems.append(f"{where}: prompt {p.id!r} is {nbytes} bytes, far over sequence.context="
                            f"{context} tokens — shorten it, or pick a larger sequence budget (e.g. sequence=s1024)")
            continue
        n = count_tokens(line)
        if n > context:
            problems.append(f"{where}: prompt {p.id!r} is {n} tokens as sent, over sequence.context="
                            f"{context} — shorten it, or pick a larger sequence budget (e.g. sequence=s1024)")
        elif count_prompt is not None and positions is not None and (m := count_prompt(line)) > positions:
            problems.append(f"{where}: prompt {p.id!r} is {m} tokens with the app's template, over the {positions} "
                            "positions left for it (model.max_seq_len − sequence.max_new_tokens) — shorten it or "
                            "lower sequence.max_new_tokens")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise PromptSetError("\n".join(problems[:5]) + more)


def load_prompts(
    path: str | Path, *, set_name: str | None = None, newlines: Literal["reject", "join"] = "reject"
) -> list[Prompt]:
    """All prompts of a JSONL file, validated (see module doc); ``set_name`` defaults to the file stem."""
    if newlines not in ("reject", "join"):
        raise ValueError(f"newlines={newlines!r}: use 'reject' or 'join'")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PromptSetError(f"{path}: no such prompt file — check prompts.path / the prompts group") from exc
    except UnicodeDecodeError as exc:
        raise PromptSetError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}) — save the file as UTF-8") from exc
    name = path.stem if set_name is None else set_name
    prompts: list[Prompt] = []
    first_line: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            msg = f"{where}: invalid JSON ({exc.msg} at column {exc.colno}) — one object per line"
            raise PromptSetError(msg) from exc
        p = parse_prompt(obj, where, set_name=name, newlines=newlines)
        if p.id in first_line:
            first = first_line[p.id]
            raise PromptSetError(f"{where}: duplicate id {p.id!r} (first on line {first}) — ids must be unique")
        first_line[p.id] = n
        prompts.append(p)
    if not prompts:
        raise PromptSetError(f"{path}: no prompts — add one JSON object per line")
    return prompts


# Filler for length prompts: plain, factual, self-consistent sentences. Each question's answer is stated exactly
# once, in a FACT sentence placed inside the filler, so long-context answers can be scored with reference_match.
_FILLER = (
    "The harbour town wakes early, and the fishing boats leave before the sun clears the hills.",
    "Along the main street there is a bakery, a hardware shop, a small library and a post office.",
    "In spring the gardens behind the houses fill with tulips, and the school holds its market on the square.",
    "The ferry crosses to the island twice a day, and in winter the crossing is often cancelled by storms.",
    "Visitors walk the cliff path to the old lighthouse, which was built of grey granite two centuries ago.",
    "The town council meets on the first Monday of every month in the hall next to the church.",
    "Most families keep a vegetable plot, and the allotments by the river are shared by twenty households.",
    "During the summer festival the harbour is lit with lanterns and a brass band plays until midnight.",
)
_FACTS = (
    ("The lighthouse keeper is called Mara.", "What is the name of the lighthouse keeper?", ("Mara",)),
    ("The baker paints his front door blue every year.", "What colour does the baker paint his door?", ("blue",)),
    ("The library owns exactly seven hundred books.", "How many books does the library own?",
     ("seven hundred", "700")),
    ("The ferry captain keeps a parrot named Pepper.", "What is the name of the ferry captain's parrot?",
     ("Pepper",)),
    ("The festival always ends with a rowing race to the island.", "How does the festival end?",
     ("rowing race",)),
)


def length_prompts(n_tokens: int, count_tokens: Callable[[str], int], n: int = 5, seed: int = 0) -> list[Prompt]:
    """``n`` single-line prompts of at most (and about) ``n_tokens`` tokens, as counted by ``count_tokens``.

    Each is filler text with one fact hidden in it and a question about that fact at the end, so the model must
    read the long context (scored by reference_match). Deterministic for a given seed and tokenizer.
    """
    if n_tokens <= 0 or n <= 0:
        raise PromptSetError(f"length prompts: n_tokens={n_tokens} and n={n} must be positive")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        fact, question, answer = _FACTS[(i + seed) % len(_FACTS)]
        order = list(_FILLER)
        rng.shuffle(order)
        words = " ".join(order * (n_tokens // 100 + 2)).split()  # > n_tokens words (a word is >= 1 token)
        fact_at = rng.random()

        def build(k: int, words: list[str] = words, fact: str = fact, fact_at: float = fact_at,
                  question: str = question) -> str:
            body = words[:k]
            cut = int(len(body) * fact_at)
            text = " ".join([*body[:cut], fact, *body[cut:]])
            return f"Read the text and answer the question. Text: {text} Question: {question}"

        if count_tokens(build(0)) > n_tokens:
            raise PromptSetError(
                f"length prompts: n_tokens={n_tokens} is below the bare question ({count_tokens(build(0))} tokens) "
                "— use a larger sequence.context"
            )
        lo, hi = 0, len(words)
        while lo < hi:  # largest k whose prompt fits; token count grows monotonically with k
            mid = (lo + hi + 1) // 2
            if count_tokens(build(mid)) <= n_tokens:
                lo = mid
            else:
                hi = mid - 1
        text = build(lo)
        out.append(Prompt(id=f"len{n_tokens}-{i}", prompt=text, reference=answer, lang="en",
                          tags=("length", f"target_tokens={n_tokens}", f"tokens={count_tokens(text)}"),
                          set_name="length"))
    return out


def sent_lines(prompts: list[Prompt], template: str, count_tokens: Callable[[str], int], context: int,
               what: str = "the line sent", count_prompt: Callable[[str], int] | None = None,
               positions: int | None = None) -> list[str]:
    """The single line sent for each prompt (``template`` with ``{prompt}`` filled in), checked as the app and the
    sequence budget require; every error names the prompt's FILE:LINE (:class:`PromptSetError`)."""
    sent = [template.replace("{prompt}", p.prompt) for p in prompts]
    for p, line in zip(prompts, sent, strict=True):
        check_line(p.where or f"prompt {p.id!r}", what, line)
    check_lengths(prompts, sent, count_tokens, context, count_prompt, positions)
    return sent
