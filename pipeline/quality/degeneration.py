"""degeneration: does the answer loop, leak template tokens or produce an empty list skeleton?

Score in [0, 1], high = degenerate; quality_score uses 1 - score (and caps a strongly degenerate answer, score.py).
It is the MAX of the signals below, because each catches a different failure and one strong signal is enough.
Every signal is itself in [0, 1]. The failures are the ones a real greedy SmolLM2-135M shows
(tests/quality/smollm2_labelled.jsonl):
- ``1 - distinct_2``: share of repeated token bigrams ("the the the", a phrase cycling);
- ``longest_repeat_ratio``: longest repeated token n-gram as a share of the answer (only from 3 tokens up: every
  natural sentence repeats a word or a two-word collocation such as "of the"; a period-p loop repeated k times
  scores ~1 - 1/k);
- ``repeated_line_ratio``: share of non-empty lines that duplicate an earlier line (list/line loops);
- ``phrase_repeat``: share of tokens covered by a 4-gram that occurs >= 3 times — a sentence or phrase restated
  three times with other text between ("A moment of stillness, a fleeting sight," x4), which neither the bigram
  share nor the longest contiguous repeat sees in a long answer;
- ``char_loop``: share of the answer's non-space characters inside a run of one short unit (1-8 characters)
  repeated >= 4 times and >= 12 characters long ("1.1.1.1.1…", "~~~~~~~~"); the word tokeniser sees "1.1.1.1" as
  one number and "~~~~" as nothing, so these loops need a character-level look;
- ``template_leak``: 1 when a chat-template/control token appears as text (``<|assistant|>``, ``<|user|>``,
  ``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``, ``</s>``, ``<s>``, ``<unk>``, any ``<|name|>``): the user sees
  the template, which is broken, whatever follows; 0.5 for an answer that only opens with ``<!--`` (markup nobody
  asked for, weaker evidence: an HTML answer may legitimately start so);
- ``list_skeleton``: share of lines that are list/label markers with no content ("A: 1.", "2.", "- **1.**"),
  counted once there are >= 3 such lines (one empty bullet is a formatting slip, a column of them is a loop).
"""

from __future__ import annotations

import re
from collections import Counter

from pipeline.quality.text import tokens

MIN_REPEAT = 3  # n-grams shorter than this repeat in ordinary prose
PHRASE_N, PHRASE_MIN_COUNT = 4, 3  # a 4-gram said three times is a restatement loop, twice can be emphasis
CHAR_UNIT_MAX, CHAR_MIN_REPEATS, CHAR_MIN_RUN = 8, 4, 12
OPENING_MARKUP_WEIGHT = 0.5
SKELETON_MIN_LINES = 3

# Control/template tokens that must never be shown to a user (ChatML, Llama-2/Zephyr, SentencePiece specials).
CONTROL_TOKENS: tuple[str, ...] = ("<|assistant|>", "<|user|>", "<|system|>", "<|im_start|>", "<|im_end|>",
                                   "<|endoftext|>", "</s>", "<s>", "<unk>", "<pad>")
_CONTROL_RE = re.compile("|".join(re.escape(t) for t in CONTROL_TOKENS) + r"|<\|[a-z_]{2,20}\|>", re.IGNORECASE)
_OPENING_MARKUP_RE = re.compile(r"\A\s*<!--")
_RULE_LINE_RE = re.compile(r"^[ \t]*([-=_*])(?:[ \t]*\1){2,}[ \t]*$", re.MULTILINE)
# A line that is only list/label scaffolding: bullets, numbers, "A:", bold markers, punctuation.
# Possessive quantifiers (Python ≥ 3.11): the alternatives overlap (runs of digits, punctuation, spaces), and with
# backtracking a long line that fails at its end took minutes (a real SmolLM2-w3 answer of repeated `\_`).
_MARKER_RE = re.compile(r"^(?:[-*+>#•|]++|\d++(?:[.)]\d*+)*+[.):]?+|[A-Za-z][.):]|\*\*|__|[.:;,()\[\]]++|\s++)++$")


def distinct_n(toks: list[str], n: int = 2) -> float | None:
    """Unique n-grams / n-grams; None when the text has fewer than n tokens (undefined, not 'perfect')."""
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def longest_repeated_ngram(toks: list[str]) -> int:
    """Length of the longest token n-gram occurring at least twice (occurrences may overlap).

    Binary search on n works because a repeated n-gram implies a repeated (n-1)-gram; each probe is a set pass,
    so this is O(len * log len) n-gram hashes — fast enough for 2 k-token answers.
    """
    def has_repeat(n: int) -> bool:
        seen: set[tuple[str, ...]] = set()
        for i in range(len(toks) - n + 1):
            g = tuple(toks[i : i + n])
            if g in seen:
                return True
            seen.add(g)
        return False

    lo, hi = 0, max(len(toks) - 1, 0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if has_repeat(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def repeated_line_ratio(text: str) -> float | None:
    """Share of non-empty lines that repeat an earlier one; None for a single-line answer."""
    lines = [ln.strip().casefold() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    return 1 - len(set(lines)) / len(lines)


def phrase_repeat(toks: list[str], n: int = PHRASE_N, min_count: int = PHRASE_MIN_COUNT) -> float:
    """Share of token positions covered by an n-gram that occurs >= min_count times anywhere in the answer."""
    if len(toks) < n:
        return 0.0
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(toks)
    for i, g in enumerate(grams):
        if counts[g] >= min_count:
            covered[i : i + n] = [True] * n
    return sum(covered) / len(toks)


def _loop_run(text: str, i: int) -> int:
    """Length of the longest run at ``i`` made of one unit (1..CHAR_UNIT_MAX chars, not starting with a space)
    repeated >= CHAR_MIN_REPEATS times; 0 when there is none."""
    best = 0
    if text[i].isspace():
        return 0
    for u in range(1, CHAR_UNIT_MAX + 1):
        unit = text[i : i + u]
        if len(unit) < u:
            break
        k = 1
        while text.startswith(unit, i + k * u):
            k += 1
        if k >= CHAR_MIN_REPEATS:
            best = max(best, k * u)
    return best


def char_loop(text: str) -> float:
    """Share of non-space characters inside short-unit loops ("1.1.1.1", "~~~~"); see the module doc.

    Markdown rules and setext underlines ("-----", "=====") are layout, not loops: they are removed first."""
    text = _RULE_LINE_RE.sub("", text)
    total = sum(not c.isspace() for c in text)
    if total == 0:
        return 0.0
    looped, i = 0, 0
    while i < len(text):
        run = _loop_run(text, i)
        if run >= CHAR_MIN_RUN:
            looped += sum(not c.isspace() for c in text[i : i + run])
            i += run
        else:
            i += 1
    return min(1.0, looped / total)


def template_leaks(text: str) -> int:
    """Number of control/template tokens shown as text, plus one for an answer that opens with ``<!--``."""
    return len(_CONTROL_RE.findall(text)) + bool(_OPENING_MARKUP_RE.match(text))


def template_leak(text: str) -> float:
    """The ``template_leak`` signal: 1.0 for any control token as text, else 0.5 for an opening ``<!--``, else 0."""
    if _CONTROL_RE.search(text):
        return 1.0
    return OPENING_MARKUP_WEIGHT if _OPENING_MARKUP_RE.match(text) else 0.0


def strip_markup(text: str) -> str:
    """The answer without control tokens and HTML comment openers/closers (what a reader would take as content)."""
    return re.sub(r"<!--|-->", " ", _CONTROL_RE.sub(" ", text))


def is_skeleton_line(line: str) -> bool:
    """True for a non-empty line that is only list/label scaffolding ("A: 1.", "3.", "- **2.**")."""
    s = strip_markup(line).strip()
    return bool(s) and bool(_MARKER_RE.match(s))


def list_skeleton(text: str) -> float:
    """Share of non-empty lines that are content-free scaffolding, 0 until there are SKELETON_MIN_LINES of them."""
    lines = [ln for ln in strip_markup(text).splitlines() if ln.strip()]
    empty = sum(is_skeleton_line(ln) for ln in lines)
    return empty / len(lines) if empty >= SKELETON_MIN_LINES else 0.0


def degeneration_scores(response: str) -> dict[str, float | int | None | str]:
    """Family value ``degeneration`` plus its parts; None (with a reason) for an empty answer."""
    if not response.strip():
        return {"degeneration": None, "distinct_2": None, "longest_repeat": 0, "longest_repeat_ratio": None,
                "repeated_line_ratio": None, "phrase_repeat": None, "char_loop": None, "template_leak": None,
                "template_leaks": 0, "list_skeleton": None, "degeneration_reason": "empty response"}
    toks = tokens(response)
    d2 = distinct_n(toks, 2)
    lrn = longest_repeated_ngram(toks)
    lrn_ratio = lrn / len(toks) if lrn >= MIN_REPEAT else 0.0
    rlr = repeated_line_ratio(response)
    parts = {
        "distinct_2": d2,
        "longest_repeat": lrn,
        "longest_repeat_ratio": lrn_ratio,
        "repeated_line_ratio": rlr,
        "phrase_repeat": phrase_repeat(toks),
        "char_loop": char_loop(response),
        "template_leak": template_leak(response),
        "template_leaks": template_leaks(response),  # how many, for the reader; the signal saturates at one
        "list_skeleton": list_skeleton(response),
    }
    signals = [1 - d2 if d2 is not None else 0.0, lrn_ratio, rlr or 0.0, parts["phrase_repeat"],
               parts["char_loop"], parts["template_leak"], parts["list_skeleton"]]
    return {"degeneration": max(signals), **parts}
